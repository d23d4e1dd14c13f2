"""What keeps the hot paths cheap (docs/performance.md) without changing what they answer.

POST /buy_ticket answered before Flask's dispatch (flashsale/routes/fast_path.py) is byte for
byte what Flask's own view answers: the same status line, headers in the same order, and body,
for every outcome and refusal, in open and verified mode. Each request sequence runs on a fresh
sale once through an app with the fast path and once through one without, against the real
database; every request carries the same X-Request-ID, which the answer echoes."""
import json

import pytest
from werkzeug.test import Client

import db
from flashsale import create_app
from support import bearer, mint

JSON = "application/json"


def post(body=None, data=None, content_type=JSON, **headers):
    """A request to send: werkzeug test Client.post's keywords."""
    data = json.dumps(body).encode() if body is not None else data
    return {"data": data, "content_type": content_type, "headers": {"X-Request-ID": "same", **headers}}


def token_of(user):
    return bearer(mint(user))["Authorization"]


OPEN = [
    ("a purchase", {}, [post({"item_id": 1, "user_id": "alice"})]),
    ("a purchase of several units", {}, [post({"item_id": 1, "user_id": "alice", "quantity": 3})]),
    ("a replay, and a reused key", {}, [post({"item_id": 1, "user_id": "a"}, Idempotency_Key="k-1")] * 2
     + [post({"item_id": 1, "user_id": "a", "quantity": 2}, Idempotency_Key="k-1")]),
    ("sold out", {"stock": 1}, [post({"item_id": 1, "user_id": f"u{n}"}) for n in range(3)]),
    ("the per-user limit", {"stock": 10, "max_per_user": 1}, [post({"item_id": 1, "user_id": "a"})] * 2),
    ("no such item", {}, [post({"item_id": 99, "user_id": "a"})]),
    ("invalid fields", {}, [post({"item_id": 0, "user_id": "", "quantity": 1001, "extra": 1}),
                            post({"user_id": "a\x00"}), post({"item_id": True, "user_id": 5}),
                            post({"item_id": 1, "user_id": "a"}, Idempotency_Key="bad key")]),
    ("bodies that are not JSON objects", {}, [post(data=data) for data in (
        b"", b"{", b"[]", b"\xff", b'{"item_id": NaN, "user_id": "a"}', b'{"item_id": 1, "item_id": 2}')]),
    ("not JSON", {}, [post(data=b'{"item_id": 1}', content_type="text/plain"),
                      post(data=b'{"item_id": 1}', content_type=None)]),
    ("a body over 4 KiB, which Flask answers", {}, [post({"item_id": 1, "user_id": "a" * 5000})]),
]
VERIFIED = [
    ("a verified purchase", {}, [post({"item_id": 1}, Authorization=token_of("alice"))]),
    ("the buyer named as the token's", {}, [post({"item_id": 1, "user_id": "bob"}, Authorization=token_of("bob"))]),
    ("another buyer named", {}, [post({"item_id": 1, "user_id": "bob"}, Authorization=token_of("alice"))]),
    ("no token", {}, [post({"item_id": 1}), post({"item_id": 1}, Authorization="Basic abc")]),
    ("bad tokens", {}, [post({"item_id": 1}, Authorization="Bearer x.y.z"),
                        post({"item_id": 1}, Authorization="Bearer " + mint("a", secret="x" * 40)),
                        post({"item_id": 1}, Authorization="Bearer " + mint("a", lifetime=-100))]),
    ("a token, then a bad body", {}, [post(data=b"[1]", Authorization=token_of("alice"))]),
]


def answers(wsgi_app, reset, stock, requests):
    reset(stock=stock.get("stock", 100), max_per_user=stock.get("max_per_user"))
    client = Client(wsgi_app)
    return [(r.status, r.headers.to_wsgi_list(), r.get_data()) for r in
            (client.post("/buy_ticket", **request) for request in requests)]


def both_ways(settings, reset, stock, requests):
    """The answers of an app with the fast path, and of one without it."""
    return tuple(answers(create_app(settings, fast_path), reset, stock, requests) for fast_path in (True, False))


@pytest.mark.parametrize("name, stock, requests", OPEN, ids=[case[0] for case in OPEN])
def test_open_mode_answers_are_flasks(reset, app, name, stock, requests):
    fast, flask = both_ways(app.config["SETTINGS"], reset, stock, requests)
    assert fast == flask


@pytest.mark.parametrize("name, stock, requests", VERIFIED, ids=[case[0] for case in VERIFIED])
def test_verified_mode_answers_are_flasks(reset, verified_app, name, stock, requests):
    fast, flask = both_ways(verified_app.config["SETTINGS"], reset, stock, requests)
    assert fast == flask


def test_an_unexpected_error_is_answered_as_flask_does(reset, conn, app):
    reset(stock=1)
    conn.execute(db.query("drop_schema"))  # every statement now fails, and not transiently
    request = post({"item_id": 1, "user_id": "a"})
    try:
        fast = Client(create_app(app.config["SETTINGS"])).post("/buy_ticket", **request)
        flask = Client(create_app(app.config["SETTINGS"], fast_path=False)).post("/buy_ticket", **request)
    finally:
        reset(stock=1)
    assert fast.status == flask.status == "500 INTERNAL SERVER ERROR"
    assert fast.headers.to_wsgi_list() == flask.headers.to_wsgi_list()
    assert fast.get_data() == flask.get_data() and fast.json["code"] == "internal_error"


def test_other_methods_and_paths_go_to_flask(client):
    assert client.get("/buy_ticket").status_code == 405
    assert client.post("/buy_ticket/").status_code in (308, 404)
    assert client.options("/buy_ticket").status_code == 204


def test_the_sold_out_answer_is_the_http_ceilings(reset, app):
    """bench/ceiling_app.py answers these bytes as a constant; the fast path answers the same."""
    from bench.ceiling_app import SOLD_OUT

    [(status, headers, body)] = answers(app, reset, {"stock": 0}, [post({"item_id": 1, "user_id": "a"})])
    assert status == "409 CONFLICT" and body == SOLD_OUT.encode()
    assert [(name, value) for name, value in headers if name != "X-Request-ID"] == [
        ("Content-Type", "application/problem+json"), ("Content-Length", str(len(body)))]


def test_every_statement_stays_in_psycopgs_query_cache():
    """psycopg turns a statement's %(name)s placeholders into $n once and caches the result, but
    only for statements of up to db.QUERY_CACHE_BYTES: a longer one is parsed again at every
    execute, a cost on every purchase. db.query() sends a statement without its comments and
    indentation."""
    for path in db.QUERIES.glob("*.sql"):
        assert len(db.query(path.stem).encode()) <= db.QUERY_CACHE_BYTES, path.name
