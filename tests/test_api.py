"""The HTTP contract, through Flask's test client on the real database."""
from datetime import datetime, timedelta, timezone

import pytest

from support import assert_problem, buy, item, purchases


def test_sale_answers_201_with_the_purchase(client, conn):
    response = buy(client, quantity=2)
    assert response.status_code == 201
    body = response.get_json()
    assert body == {"purchase_id": body["purchase_id"], "item_id": 1, "user_id": "alice",
                    "quantity": 2, "remaining": 98}
    [row] = purchases(conn)
    assert (row["id"], row["user_id"], row["quantity"]) == (body["purchase_id"], "alice", 2)
    assert item(conn)["remaining"] == 98


def test_quantity_defaults_to_one(client):
    response = client.post("/buy_ticket", json={"item_id": 1, "user_id": "bob"})
    assert response.status_code == 201
    assert response.get_json()["quantity"] == 1


def test_sold_out_when_stock_is_short(client, reset, conn):
    reset(stock=3)
    assert buy(client, quantity=2).status_code == 201
    assert_problem(buy(client, user_id="bob", quantity=2), 409, "sold_out")
    assert buy(client, user_id="bob", quantity=1).status_code == 201
    assert_problem(buy(client, user_id="carol"), 409, "sold_out")
    assert item(conn)["remaining"] == 0
    assert sum(row["quantity"] for row in purchases(conn)) == 3


def test_zero_stock_is_sold_out(client, reset):
    reset(stock=0)
    assert_problem(buy(client), 409, "sold_out")


def test_per_user_limit(client, reset, conn):
    reset(stock=10, max_per_user=2)
    assert buy(client).status_code == 201
    assert_problem(buy(client, quantity=2), 409, "limit_reached")
    assert buy(client).status_code == 201
    assert_problem(buy(client), 409, "limit_reached")
    assert buy(client, user_id="bob", quantity=2).status_code == 201
    assert item(conn)["remaining"] == 6


def test_limit_is_per_item(client, reset):
    reset(stock=10, items=2, max_per_user=1)
    assert buy(client, item_id=1).status_code == 201
    assert buy(client, item_id=2).status_code == 201
    assert_problem(buy(client, item_id=2), 409, "limit_reached")


def test_sale_window(client, reset, conn):
    now = datetime.now(timezone.utc)
    reset(stock=5, sale_starts_at=now + timedelta(hours=1))
    assert_problem(buy(client), 409, "sale_not_started")
    reset(stock=5, sale_starts_at=now - timedelta(hours=2), sale_ends_at=now - timedelta(hours=1))
    assert_problem(buy(client), 409, "sale_ended")
    reset(stock=5, sale_starts_at=now - timedelta(hours=1), sale_ends_at=now + timedelta(hours=1))
    assert buy(client).status_code == 201
    assert len(purchases(conn)) == 1


def test_unknown_item_is_404(client, conn):
    assert_problem(buy(client, item_id=2), 404, "item_not_found")
    assert purchases(conn, item_id=2) == []


def test_idempotent_replay_returns_the_original_purchase(client, conn):
    first = buy(client, headers={"Idempotency-Key": "order-42"})
    again = buy(client, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(purchases(conn)) == 1
    assert item(conn)["remaining"] == 99


def test_replay_after_sold_out_still_returns_the_purchase(client, reset):
    reset(stock=1)
    first = buy(client, headers={"Idempotency-Key": "k1"})
    assert_problem(buy(client, user_id="bob"), 409, "sold_out")
    again = buy(client, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.get_json() == first.get_json()


def test_same_key_other_body_is_422(client, conn, reset):
    reset(stock=10, items=2)
    assert buy(client, headers={"Idempotency-Key": "k"}).status_code == 201
    assert_problem(buy(client, quantity=2, headers={"Idempotency-Key": "k"}), 422, "idempotency_key_reused")
    assert_problem(buy(client, item_id=2, headers={"Idempotency-Key": "k"}), 422, "idempotency_key_reused")
    assert len(purchases(conn)) == 1 and purchases(conn, item_id=2) == []


def test_keys_belong_to_one_user(client, conn):
    assert buy(client, headers={"Idempotency-Key": "k"}).status_code == 201
    other = buy(client, user_id="bob", headers={"Idempotency-Key": "k"})
    assert other.status_code == 201 and "Idempotent-Replayed" not in other.headers
    assert len(purchases(conn)) == 2


def test_get_item(client, reset):
    starts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    reset(stock=7, max_per_user=3, sale_starts_at=starts)
    buy(client, quantity=2)
    response = client.get("/items/1")
    assert response.status_code == 200
    assert response.get_json() == {
        "id": 1, "name": "Ticket 1", "stock": 7, "remaining": 5, "sold": 2, "held": 0, "max_per_user": 3,
        "hold_seconds": None, "sale_starts_at": "2026-01-01T00:00:00+00:00", "sale_ends_at": None,
        "price": None, "currency": None, "revenue": 0, "refunds_owed": 0,
    }


@pytest.mark.parametrize("path", ["/items/2", "/items/0", "/items/99999999999"])
def test_get_unknown_item_is_404(client, path):
    assert_problem(client.get(path), 404, "item_not_found")


def test_health_and_readiness(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").get_json() == {"status": "ready", "auth": "open", "replication": "async"}


def test_wrong_method_is_405(client):
    response = client.get("/buy_ticket")
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_unknown_path_is_404(client):
    assert_problem(client.get("/nope"), 404, "not_found")


def test_errors_never_leak_sql_or_tracebacks(client):
    for response in [buy(client, item_id=2), client.post("/buy_ticket", data="{", content_type="application/json")]:
        text = response.get_data(as_text=True)
        assert "Traceback" not in text and "SELECT" not in text and "psycopg" not in text


def test_options_names_the_allowed_methods_without_a_body(client):
    response = client.options("/buy_ticket")
    assert response.status_code == 204 and response.data == b""
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize("path", ["/nope", "/items/abc"])
def test_unknown_paths_are_404_problems(client, path):
    assert_problem(client.get(path), 404, "not_found")
