"""Every validation rule of POST /buy_ticket: a clear 4xx, nothing sold."""
import pytest

from support import assert_problem, post_raw, purchases

VALID = {"item_id": 1, "user_id": "alice", "quantity": 1}


@pytest.mark.parametrize("data", [
    b"", b"{", b'{"item_id": 1,', b"nul", b"\xff\xfe", b'{"item_id": NaN, "user_id": "a"}',
    b'{"item_id": Infinity, "user_id": "a"}', b"[" * 2000 + b"]" * 2000,
])
def test_unparseable_json_is_400(client, conn, data):
    assert_problem(post_raw(client, data), 400, "invalid_json")
    assert purchases(conn) == []


@pytest.mark.parametrize("data", [b"[]", b'"text"', b"1", b"null", b"true", b'[{"item_id": 1}]'])
def test_json_that_is_not_an_object_is_400(client, data):
    assert_problem(post_raw(client, data), 400, "invalid_json")


def test_duplicate_keys_are_400(client):
    assert_problem(post_raw(client, b'{"item_id": 1, "user_id": "a", "user_id": "b"}'), 400, "invalid_json")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data", "application/xml"])
def test_body_that_is_not_json_is_415(client, content_type):
    response = client.post("/buy_ticket", data=b'{"item_id": 1, "user_id": "a"}', content_type=content_type)
    assert_problem(response, 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(client):
    response = post_raw(client, b'{"item_id": 1, "user_id": "a"}', "application/json; charset=utf-8")
    assert response.status_code == 201


def test_body_over_4_kib_is_413(client, conn):
    body = b'{"item_id": 1, "user_id": "' + b"a" * 5000 + b'"}'
    assert_problem(post_raw(client, body), 413, "payload_too_large")
    assert purchases(conn) == []


@pytest.mark.parametrize("changes, field", [
    ({"item_id": None}, "item_id"), ({"item_id": "1"}, "item_id"), ({"item_id": 1.0}, "item_id"),
    ({"item_id": 1.5}, "item_id"), ({"item_id": True}, "item_id"), ({"item_id": 0}, "item_id"),
    ({"item_id": -1}, "item_id"), ({"item_id": 2**31}, "item_id"), ({"item_id": 10**30}, "item_id"),
    ({"item_id": [1]}, "item_id"), ({"item_id": {"id": 1}}, "item_id"),
    ({"user_id": ""}, "user_id"), ({"user_id": "x" * 65}, "user_id"), ({"user_id": 7}, "user_id"),
    ({"user_id": None}, "user_id"), ({"user_id": ["alice"]}, "user_id"), ({"user_id": "a\x00b"}, "user_id"),
    ({"user_id": "line\nbreak"}, "user_id"), ({"user_id": "\ud800"}, "user_id"),
    ({"quantity": 0}, "quantity"), ({"quantity": -3}, "quantity"), ({"quantity": 1001}, "quantity"),
    ({"quantity": "2"}, "quantity"), ({"quantity": 2.0}, "quantity"), ({"quantity": False}, "quantity"),
    ({"quantity": None}, "quantity"), ({"colour": "red"}, "colour"),
])
def test_bad_field_is_422_naming_it(client, conn, changes, field):
    body = {**VALID, **changes}
    response = client.post("/buy_ticket", json=body)
    problem = assert_problem(response, 422, "invalid_request")
    assert [error["field"] for error in problem["errors"]] == [field]
    assert purchases(conn) == []


@pytest.mark.parametrize("missing", ["item_id", "user_id"])
def test_missing_field_is_422(client, missing):
    body = {key: value for key, value in VALID.items() if key != missing}
    problem = assert_problem(client.post("/buy_ticket", json=body), 422, "invalid_request")
    assert problem["errors"] == [{"field": missing, "message": "is required"}]


def test_every_bad_field_is_named(client):
    problem = assert_problem(client.post("/buy_ticket", json={"item_id": "x", "quantity": 0, "z": 1}),
                             422, "invalid_request")
    assert sorted(error["field"] for error in problem["errors"]) == ["item_id", "quantity", "user_id", "z"]


def test_unicode_user_ids_up_to_64_characters_are_fine(client, conn):
    user_id = "é" * 32 + "日本" * 16
    assert len(user_id) == 64
    assert client.post("/buy_ticket", json={**VALID, "user_id": user_id}).status_code == 201
    assert purchases(conn)[0]["user_id"] == user_id


def test_an_escaped_surrogate_pair_is_one_character(client, conn):
    body = '{"item_id": 1, "user_id": "a\\ud85a\\udf04"}'  # JSON for "a" + U+26B04
    assert client.post("/buy_ticket", data=body, content_type="application/json").status_code == 201
    assert purchases(conn)[0]["user_id"] == "a\U00026b04"


@pytest.mark.parametrize("key", ["", "k" * 256, "has space", "tab\tkey", "ключ"])
def test_bad_idempotency_key_is_422(client, conn, key):
    response = client.post("/buy_ticket", json=VALID, headers={"Idempotency-Key": key})
    problem = assert_problem(response, 422, "invalid_request")
    assert [error["field"] for error in problem["errors"]] == ["Idempotency-Key"]
    assert purchases(conn) == []


def test_longest_idempotency_key_is_fine(client):
    response = client.post("/buy_ticket", json=VALID, headers={"Idempotency-Key": "~" * 255})
    assert response.status_code == 201


@pytest.mark.parametrize("user_id", ["'; DROP TABLE items; --", "1 OR 1=1", "$1", "%(item_id)s", "\\x00"])
def test_sql_in_fields_is_stored_verbatim(client, conn, user_id):
    assert client.post("/buy_ticket", json={**VALID, "user_id": user_id}).status_code == 201
    assert [row["user_id"] for row in purchases(conn)] == [user_id]
