"""What keeps the hot paths cheap (docs/performance.md) without changing what they answer.

POST /buy_ticket answered before Flask's dispatch (routes/fast_path.py) is byte for byte what
Flask's own view answers: the same status line, headers in the same order, and body, for every
outcome and refusal, in open and verified mode. Each request sequence runs on a fresh sale once
through the fast path and once through Flask alone, against the real database."""
import json

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, _query2pg
from werkzeug.test import Client

import app as service
import db
from support import TOKEN_SECRET, bearer, mint

JSON = "application/json"


def post(body=None, data=None, content_type=JSON, **headers):
    """A request to send: werkzeug test Client.post's keywords."""
    data = json.dumps(body).encode() if body is not None else data
    return {"data": data, "content_type": content_type, "headers": headers}


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


def both_ways(app, reset, stock, requests):
    fast = app.wsgi_app.app  # observe.Observed wraps fast_path.FastPath, which wraps Flask's own
    return answers(fast, reset, stock, requests), answers(fast.app, reset, stock, requests)


@pytest.mark.parametrize("name, stock, requests", OPEN, ids=[case[0] for case in OPEN])
def test_open_mode_answers_are_flasks(reset, name, stock, requests):
    fast, flask = both_ways(service.app, reset, stock, requests)
    assert fast == flask


@pytest.mark.parametrize("name, stock, requests", VERIFIED, ids=[case[0] for case in VERIFIED])
def test_verified_mode_answers_are_flasks(reset, verified_app, name, stock, requests):
    fast, flask = both_ways(verified_app, reset, stock, requests)
    assert fast == flask


def test_an_unexpected_error_is_answered_as_flask_does(reset, conn):
    reset(stock=1)
    conn.execute(db.query("drop_schema"))  # every statement now fails, and not transiently
    try:
        fast = Client(service.app.wsgi_app.app).post("/buy_ticket", json={"item_id": 1, "user_id": "a"})
        flask = Client(service.app.wsgi_app.app.app).post("/buy_ticket", json={"item_id": 1, "user_id": "a"})
    finally:
        reset(stock=1)
    assert fast.status == flask.status == "500 INTERNAL SERVER ERROR"
    assert fast.headers.to_wsgi_list() == flask.headers.to_wsgi_list()
    assert fast.get_data() == flask.get_data() and fast.json["code"] == "internal_error"


def test_other_methods_and_paths_go_to_flask(client):
    assert client.get("/buy_ticket").status_code == 405
    assert client.post("/buy_ticket/").status_code in (308, 404)
    assert client.options("/buy_ticket").status_code == 204


def test_the_sold_out_answer_is_the_http_ceilings(reset):
    """bench/ceiling_app.py answers these bytes as a constant; the fast path answers the same."""
    from bench.ceiling_app import SOLD_OUT

    [(status, headers, body)] = answers(service.app.wsgi_app.app, reset, {"stock": 0},
                                        [post({"item_id": 1, "user_id": "a"})])
    assert status == "409 CONFLICT" and body == SOLD_OUT.encode()
    assert headers == [("Content-Type", "application/problem+json"), ("Content-Length", str(len(body)))]


@pytest.mark.parametrize("hold_seconds", [None, 600], ids=["sold at once", "payment window"])
def test_the_purchase_statements_stay_in_psycopgs_query_cache(reset, hold_seconds):
    """psycopg turns a statement's %(name)s placeholders into $n once and caches the result, but
    only for statements of up to 4096 bytes (MAX_CACHED_STATEMENT_LENGTH in psycopg 3.3): a longer
    one is parsed again at every execute, 16 µs of each purchase. db.query() sends buy_ticket.sql
    and buy_held_ticket.sql without their comments and indentation."""
    reset(stock=10, hold_seconds=hold_seconds)
    db.buy_ticket(1, "first", 1)
    hits = _query2pg.cache_info().hits
    db.buy_ticket(1, "second", 1)
    assert _query2pg.cache_info().hits > hits


@pytest.mark.parametrize("name", ["buy_ticket", "buy_held_ticket", "buy_ticket_expiring_holds"])
def test_every_purchase_statement_is_short_enough_for_that_cache(name):
    assert len(db.query(name).encode()) <= MAX_CACHED_STATEMENT_LENGTH
