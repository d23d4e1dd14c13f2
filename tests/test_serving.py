"""Concurrency and overload through real gunicorn over real sockets."""
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest
import requests
from psycopg import sql

import db
from deploy import local_server
from deploy.local_server import LocalServer
from support import cut_service_connections, item, purchases, row_lock_held, sample, scrape


def in_parallel(function, arguments, threads=50):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, arguments))


def answers(responses):
    return Counter((r.status_code, r.json().get("code", "created")) for r in responses)


@contextmanager
def database_refusing_connections(conn):
    """The service's database takes no new connection and its open ones are cut."""
    alter = "ALTER DATABASE {} ALLOW_CONNECTIONS {}"
    name = sql.Identifier(conn.info.dbname)
    with psycopg.connect(conn.info.dsn, dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL(alter).format(name, sql.SQL("false")))
        try:
            cut_service_connections(conn)
            yield
        finally:
            admin.execute(sql.SQL(alter).format(name, sql.SQL("true")))


def test_burst_sells_exactly_the_stock(server, reset, conn):
    reset(stock=100)
    responses = in_parallel(lambda n: server.buy(user_id=f"user-{n}"), range(600))
    assert answers(responses) == {(201, "created"): 100, (409, "sold_out"): 500}
    rows = purchases(conn)
    assert len(rows) == 100 and item(conn)["remaining"] == 0
    sales = [r.json() for r in responses if r.status_code == 201]
    assert sorted(sale["purchase_id"] for sale in sales) == [row["id"] for row in rows]
    assert sorted(sale["remaining"] for sale in sales) == list(range(100))  # each saw the last sale


def test_one_user_in_parallel_never_exceeds_the_limit(server, reset, conn):
    reset(stock=100, max_per_user=3)
    responses = in_parallel(lambda n: server.buy(user_id="greedy"), range(50))
    assert answers(responses) == {(201, "created"): 3, (409, "limit_reached"): 47}
    assert sum(row["quantity"] for row in purchases(conn)) == 3


def test_buyers_queued_on_the_row_lock_see_the_purchases_made_meanwhile(server, reset, conn):
    """Requests that start while the item is locked decide on a snapshot older than the purchases
    made before them; the per-user limit still holds."""
    reset(stock=100, max_per_user=2)
    with ThreadPoolExecutor(8) as pool:
        with row_lock_held():
            futures = [pool.submit(server.buy, user_id="queued") for _ in range(8)]
            time.sleep(0.5)  # the server's four workers now wait for the lock
        responses = [future.result() for future in futures]
    assert answers(responses) == {(201, "created"): 2, (409, "limit_reached"): 6}
    assert sum(row["quantity"] for row in purchases(conn)) == 2


def test_racing_duplicates_sell_once(server, reset, conn):
    reset(stock=100)
    responses = in_parallel(lambda n: server.buy(user_id="alice", key="same-key"), range(30), threads=30)
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["purchase_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 29
    assert len(purchases(conn)) == 1 and item(conn)["remaining"] == 99


def test_racing_duplicates_on_different_items_sell_once(server, reset, conn):
    reset(stock=100, items=2)
    responses = in_parallel(lambda n: server.buy(item_id=1 + n % 2, key="k"), range(20), threads=20)
    codes = answers(responses)
    assert codes[(201, "created")] >= 1
    assert codes[(201, "created")] + codes[(422, "idempotency_key_reused")] == 20
    assert len(purchases(conn, 1)) + len(purchases(conn, 2)) == 1


def test_pool_exhausted_answers_503_within_the_budget(client):
    pool = db.open_pool()
    with pool.connection():  # the worker's only connection is taken, and given back only after the answer
        response = client.post("/buy_ticket", json={"item_id": 1, "user_id": "alice"})
    assert response.status_code == 503
    assert response.get_json()["code"] == "overloaded" and response.headers["Retry-After"] == "1"
    # For a moment the worker answers 503 at once instead of queueing buyers on the pool again.
    db.pop_pool_stats()
    assert client.post("/buy_ticket", json={"item_id": 1, "user_id": "alice"}).status_code == 503
    assert db.pop_pool_stats().get("requests_num", 0) == 0  # the pool was not asked
    time.sleep(db.UNREACHABLE_HOLD_SECONDS)
    assert client.post("/buy_ticket", json={"item_id": 1, "user_id": "alice"}).status_code == 201


def test_lock_held_too_long_answers_503_within_the_budget(start_server, reset, conn):
    reset(stock=10)
    server = start_server(WEB_CONCURRENCY="2", DB_RETRY_BUDGET_SECONDS="1").wait_ready()
    with row_lock_held():  # released only after the answer: the budget ended the wait
        response = server.buy()
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "overloaded"
    assert server.buy().status_code == 201
    assert len(purchases(conn)) == 1


def test_database_refusing_connections_answers_503_fast_then_recovers(start_server, reset, conn):
    reset(stock=10)
    server = start_server(WEB_CONCURRENCY="1", DB_RETRY_BUDGET_SECONDS="1").wait_ready()
    with database_refusing_connections(conn):
        refused = [server.buy(user_id=f"user-{n}") for n in range(5)]
        samples = scrape(server.url)
    assert {r.status_code for r in refused} == {503}
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    # The first waited on the pool for DB_POOL_TIMEOUT; the next were answered for a moment
    # without asking the pool again.
    waited = sample(samples, "flashsale_unavailable_total", reason="pool_timeout")
    answered_at_once = sample(samples, "flashsale_unavailable_total", reason="database_unreachable")
    assert waited >= 1 and answered_at_once >= 1 and waited + answered_at_once == 5
    deadline = time.monotonic() + 15
    while (response := server.buy(user_id="after")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 201
    assert [row["user_id"] for row in purchases(conn)] == ["after"]


def test_readiness_follows_the_database(start_server, conn):
    server = start_server(WEB_CONCURRENCY="1").wait_ready()
    with database_refusing_connections(conn):
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        not_ready = requests.get(f"{server.url}/readyz", timeout=5)
        assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
        read = requests.get(f"{server.url}/items/1", timeout=5)
        assert read.status_code == 503 and read.headers["Retry-After"] == "1"
        assert "item could not be read" in read.json()["detail"]
    assert server.wait_ready()


def test_a_server_that_never_gets_ready_is_stopped(monkeypatch):
    """gunicorn runs, but its database is unreachable: entering the server fails and stops it."""
    monkeypatch.setattr(local_server, "READY_WAIT_SECONDS", 2)
    server = LocalServer(WEB_CONCURRENCY="1", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(RuntimeError, match="was not ready"):
        with server:
            pass
    assert server.process.poll() is not None


def test_a_killed_connection_is_retried_transparently(server, reset, conn):
    reset(stock=10)
    assert server.buy(user_id="warm").status_code == 201
    cut_service_connections(conn)
    responses = [server.buy(user_id=f"user-{n}") for n in range(8)]
    assert {r.status_code for r in responses} == {201}
    assert len(purchases(conn)) == 9


def test_superuser_can_still_connect(conn):
    """Guards the tests above: they must never leave the database closed."""
    with psycopg.connect(conn.info.dsn, connect_timeout=5) as other:
        assert other.execute("SELECT 1").fetchone()[0] == 1
