"""Verified buyers: bearer tokens checked before anything is sold, the buyer taken from `sub`,
a buyer's own purchases; and open mode, as before tokens existed."""
import base64
import dataclasses
import hashlib
import hmac
import json
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flashsale import create_app
from verify import proof
from flashsale import settings as configuration
from support import TOKEN_SECRET, assert_problem, bearer, item, mint, purchases

OTHER_SECRET = "another-identity-provider-secret-0123456789"


def buy(client, token=None, headers=None, **body):
    headers = {**(bearer(token) if token else {}), **(headers or {})}
    return client.post("/buy_ticket", json={"item_id": 1, **body}, headers=headers)


def assert_unauthorized(response, code):
    """401 with the RFC 6750 challenge; `invalid_token` names its error, `unauthorized` none."""
    body = assert_problem(response, 401, code)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="flashsale"')
    assert ('error="invalid_token"' in challenge) == (code == "invalid_token")
    return body


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header, payload, key=TOKEN_SECRET.encode()):
    """A token built by hand, HMAC-SHA256 over whatever header and payload it is given."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def app_with(**environ):
    """The app under these AUTH_JWT_* settings."""
    auth = configuration.auth_settings(environ)
    return create_app(dataclasses.replace(configuration.load(), **auth)).test_client()


# Verified mode: the buyer is the token's subject.

def test_a_verified_buyer_buys_without_naming_itself(verified_client, conn):
    response = buy(verified_client, mint("alice"))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["user_id"] == "alice"
    [row] = purchases(conn)
    assert row["user_id"] == "alice"


def test_user_id_in_the_body_must_be_the_token_subject(verified_client, conn):
    assert buy(verified_client, mint("alice"), user_id="alice").status_code == 201
    assert_problem(buy(verified_client, mint("alice"), user_id="mallory"), 403, "user_mismatch")
    assert [row["user_id"] for row in purchases(conn)] == ["alice"]


def test_a_bot_changing_user_id_does_not_pass_the_per_user_limit(verified_client, reset, conn):
    reset(stock=10, max_per_user=1)
    token = mint("bot")
    assert buy(verified_client, token).status_code == 201
    assert_problem(buy(verified_client, token), 409, "limit_reached")
    for alias in ["bot-2", "bot-3", "someone"]:
        assert_problem(buy(verified_client, token, user_id=alias), 403, "user_mismatch")
    assert len(purchases(conn)) == 1 and item(conn)["remaining"] == 9


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
                                     {"Authorization": ""}, {"Authorization": "Token abc"}])
def test_no_bearer_token_is_401_unauthorized(verified_client, conn, headers):
    assert_unauthorized(buy(verified_client, headers=headers, user_id="alice"), "unauthorized")
    assert purchases(conn) == []


INVALID_TOKENS = {
    "not a token": lambda: "abc",
    "empty": lambda: "",
    "two segments": lambda: mint().rsplit(".", 1)[0],
    "bad signature": lambda: mint(secret=OTHER_SECRET),
    "alg none": lambda: b64(b'{"alg":"none","typ":"JWT"}') + "." + mint().split(".")[1] + ".",
    "algorithm not configured": lambda: mint(algorithm="HS512"),
    "expired": lambda: mint(lifetime=-60),
    "not yet valid": lambda: mint(nbf=int(time.time()) + 120),
    "issued in the future": lambda: mint(iat=int(time.time()) + 120),
    "no exp": lambda: mint(exp=None),
    "no sub": lambda: mint(sub=None),
    "sub too long": lambda: mint("x" * 65),
    "sub with a control character": lambda: mint("ali\nce"),
    "sub empty": lambda: mint(""),
    "sub not a string": lambda: hand_signed({"alg": "HS256"}, {"sub": 7, "exp": time.time() + 60}),
    "exp a string": lambda: hand_signed({"alg": "HS256"}, {"sub": "a", "exp": str(int(time.time()) + 60)}),
    "exp a boolean": lambda: hand_signed({"alg": "HS256"}, {"sub": "a", "exp": True}),
    "aud without a configured audience": lambda: mint(aud="another-shop"),
    "aud of the wrong type": lambda: hand_signed({"alg": "HS256"}, {"sub": "a", "exp": time.time() + 60, "aud": 0}),
    "iss of the wrong type": lambda: hand_signed({"alg": "HS256"}, {"sub": "a", "exp": time.time() + 60, "iss": []}),
    "payload not an object": lambda: hand_signed({"alg": "HS256"}, ["sub", "a"]),
    "huge": lambda: mint(padding="x" * 5000),
    "padded": lambda: mint() + "=",
    "non-canonical base64": lambda: non_canonical(mint()),
}


def non_canonical(token):
    """The same signature bytes, spelled with other unused trailing bits: PyJWT refuses it."""
    head, signature = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    return f"{head}.{signature[:-1]}{alphabet[last ^ 1]}"  # a 32-byte HMAC leaves 2 bits unused


@pytest.mark.parametrize("case", INVALID_TOKENS)
def test_a_token_that_does_not_verify_is_401_invalid_token(verified_client, conn, case):
    response = buy(verified_client, headers={"Authorization": f"Bearer {INVALID_TOKENS[case]()}"})
    assert_unauthorized(response, "invalid_token")
    assert purchases(conn) == [] and item(conn)["remaining"] == 100


def test_leeway_accepts_a_token_expired_a_moment_ago(verified_client):
    assert buy(verified_client, mint(lifetime=-10)).status_code == 201  # AUTH_JWT_LEEWAY_SECONDS=30


def test_a_remembered_token_is_refused_once_it_expires(reset, conn):
    reset(stock=10)
    client = app_with(AUTH_JWT_SECRET=TOKEN_SECRET, AUTH_JWT_LEEWAY_SECONDS="0")
    token = mint("brief", lifetime=2)
    assert buy(client, token).status_code == 201
    time.sleep(2.5)
    assert_unauthorized(buy(client, token), "invalid_token")
    assert len(purchases(conn)) == 1


def test_audience_and_issuer_are_checked_when_configured(reset, conn):
    reset(stock=10)
    client = app_with(AUTH_JWT_SECRET=TOKEN_SECRET, AUTH_JWT_AUDIENCE="flashsale",
                      AUTH_JWT_ISSUER="https://id.shop.example")
    good = {"aud": "flashsale", "iss": "https://id.shop.example"}
    assert buy(client, mint("a", **good)).status_code == 201
    for claims in [{**good, "aud": "other"}, {**good, "aud": None}, {**good, "iss": "https://evil.example"},
                   {**good, "iss": None}]:
        assert_unauthorized(buy(client, mint("b", **claims)), "invalid_token")
    assert len(purchases(conn)) == 1


def pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("algorithm, private_key", [
    ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES256", ec.generate_private_key(ec.SECP256R1())),
])
def test_a_public_key_verifies_its_own_algorithm_only(reset, conn, tmp_path, algorithm, private_key):
    reset(stock=10)
    (tmp_path / "idp.pem").write_text(pem(private_key.public_key()))
    client = app_with(AUTH_JWT_PUBLIC_KEY=str(tmp_path / "idp.pem"))
    assert buy(client, mint("a", secret=private_key, algorithm=algorithm)).status_code == 201
    # Algorithm confusion: the public key, which anyone has, used as an HMAC secret.
    forged = hand_signed({"alg": "HS256"}, {"sub": "b", "exp": time.time() + 60}, pem(private_key.public_key()).encode())
    assert_unauthorized(buy(client, headers=bearer(forged)), "invalid_token")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    assert_unauthorized(buy(client, mint("c", secret=other, algorithm=algorithm)), "invalid_token")
    assert [row["user_id"] for row in purchases(conn)] == ["a"]


def test_the_public_key_may_be_given_inline():
    key = ec.generate_private_key(ec.SECP256R1())
    inline = pem(key.public_key()).replace("\n", "\\n")  # one line, as in an environment variable
    loaded = configuration.auth_settings({"AUTH_JWT_PUBLIC_KEY": inline})
    assert loaded["auth_jwt_algorithms"] == ("ES256",)


# A buyer's own purchases.

def test_a_buyer_lists_its_own_purchases_newest_first_in_pages(verified_client):
    bought = [buy(verified_client, mint("alice")).get_json()["purchase_id"] for _ in range(5)]
    buy(verified_client, mint("bob"))
    token = mint("alice")
    first = verified_client.get("/purchases?limit=2", headers=bearer(token)).get_json()
    assert [p["purchase_id"] for p in first["purchases"]] == bought[:-3:-1]
    assert first["next_after"] == bought[3]
    second = verified_client.get(f"/purchases?limit=2&after={first['next_after']}", headers=bearer(token)).get_json()
    third = verified_client.get(f"/purchases?limit=2&after={second['next_after']}", headers=bearer(token)).get_json()
    assert [p["purchase_id"] for p in second["purchases"] + third["purchases"]] == bought[2::-1]
    assert third["next_after"] is None
    everything = verified_client.get("/purchases", headers=bearer(token)).get_json()["purchases"]
    assert {p["user_id"] for p in everything} == {"alice"} and len(everything) == 5
    assert set(everything[0]) == {"purchase_id", "item_id", "user_id", "quantity", "status", "expires_at",
                                  "created_at", "amount", "currency", "payment"}


def test_a_buyer_reads_its_own_purchase_and_never_another_buyers(verified_client):
    mine = buy(verified_client, mint("alice")).get_json()["purchase_id"]
    theirs = buy(verified_client, mint("bob")).get_json()["purchase_id"]
    own = verified_client.get(f"/purchases/{mine}", headers=bearer(mint("alice")))
    assert own.status_code == 200 and own.get_json()["purchase_id"] == mine
    other = assert_problem(verified_client.get(f"/purchases/{theirs}", headers=bearer(mint("alice"))),
                           404, "purchase_not_found")
    missing = assert_problem(verified_client.get(f"/purchases/{theirs + 1000}", headers=bearer(mint("alice"))),
                             404, "purchase_not_found")
    assert other["title"] == missing["title"] and other.keys() == missing.keys()
    assert_problem(verified_client.get(f"/purchases/{2**63}", headers=bearer(mint("alice"))), 404,
                   "purchase_not_found")


def test_purchases_need_a_valid_token(verified_client):
    assert_unauthorized(verified_client.get("/purchases"), "unauthorized")
    assert_unauthorized(verified_client.get("/purchases/1", headers=bearer(mint(secret=OTHER_SECRET))),
                        "invalid_token")


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "after=-1", "after=1.5",
                                   f"after={2**63}", "limit=²", "page=2"])
def test_bad_paging_is_422(verified_client, query):
    assert_problem(verified_client.get(f"/purchases?{query}", headers=bearer(mint())), 422, "invalid_request")


def test_purchases_answer_404_in_open_mode(client):
    assert_problem(client.get("/purchases"), 404, "verified_mode_required")
    assert_problem(client.get("/purchases/1"), 404, "verified_mode_required")


def test_open_mode_takes_user_id_from_the_body_and_ignores_tokens(client, conn):
    response = buy(client, mint("alice", secret=OTHER_SECRET), user_id="bob")
    assert response.status_code == 201 and response.get_json()["user_id"] == "bob"


# Real gunicorn.

def test_verified_server_over_http(verified_server, reset, conn):
    reset(stock=10)
    assert requests.get(f"{verified_server.url}/readyz", timeout=5).json()["auth"] == "verified"
    missing = requests.post(f"{verified_server.url}/buy_ticket", json={"item_id": 1, "user_id": "a"}, timeout=5)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="flashsale"'
    assert missing.headers["Content-Type"] == "application/problem+json"
    sold = requests.post(f"{verified_server.url}/buy_ticket", json={"item_id": 1}, headers=bearer(mint("dora")),
                         timeout=5)
    assert sold.status_code == 201 and sold.json()["user_id"] == "dora"
    listed = requests.get(f"{verified_server.url}/purchases", headers=bearer(mint("dora")), timeout=5).json()
    assert [p["purchase_id"] for p in listed["purchases"]] == [sold.json()["purchase_id"]]
    assert [row["user_id"] for row in purchases(conn)] == ["dora"]


def test_open_server_says_so_once(start_server, server):
    assert requests.get(f"{server.url}/readyz", timeout=5).json()["auth"] == "open"
    opened = start_server(WEB_CONCURRENCY="3").wait_ready()
    assert opened.output().count("buyer identity is NOT verified") == 1
    verified = start_server(WEB_CONCURRENCY="2", AUTH_JWT_SECRET=TOKEN_SECRET).wait_ready()
    assert "NOT verified" not in verified.output()


def test_the_sold_out_crowd_needs_a_valid_token_too(start_server, reset, conn):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="1", SOLD_OUT_CACHE_SECONDS="30", AUTH_JWT_SECRET=TOKEN_SECRET).wait_ready()
    url = f"{server.url}/buy_ticket"
    assert requests.post(url, json={"item_id": 1}, headers=bearer(mint("first")), timeout=5).status_code == 201
    late = requests.post(url, json={"item_id": 1}, headers=bearer(mint("late")), timeout=5)
    assert late.status_code == 409 and late.json()["code"] == "sold_out"  # now answered from memory
    anonymous = requests.post(url, json={"item_id": 1, "user_id": "x"}, timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    forged = requests.post(url, json={"item_id": 1}, headers=bearer(mint("x", secret=OTHER_SECRET)), timeout=5)
    assert forged.status_code == 401 and forged.json()["code"] == "invalid_token"
    assert len(purchases(conn)) == 1


def test_the_proof_passes_through_real_token_checks(verified_server, capsys):
    status = proof.main(["--url", verified_server.url, "--requests", "200", "--processes", "10", "--stock", "50",
                         "--token-secret", TOKEN_SECRET])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "each buyer with its own bearer token" in out
    assert "SUCCESS: Strict consistency maintained. Exactly 50 items sold." in out


def test_the_proof_fails_without_tokens_against_a_verified_server(verified_server, capsys):
    status = proof.main(["--url", verified_server.url, "--requests", "20", "--processes", "4", "--stock", "5"])
    out = capsys.readouterr().out
    assert status == 1 and "401 unauthorized" in out and "SUCCESS" not in out
