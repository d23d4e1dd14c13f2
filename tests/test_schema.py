"""The schema's lifecycle: migrations applied once and in order, a database made before migrations
upgraded in place, gunicorn refusing an older schema, and reset_db asking before it deletes."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import db
from flashsale import schema
from conftest import ROOT
from deploy.local_server import wait_until_ready
from support import flask_command, item, legacy_buy, make_legacy_database, purchase_states, purchases, run_test_query

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
def scratch_schema(reset):
    """The test may take the schema apart; a fresh one is made afterwards for the next tests."""
    yield
    reset()


def constraints(conn):
    return {(row["table_name"], row["name"]): row["definition"]
            for row in run_test_query(conn, "list_constraints")}


def refused_start(server):
    """gunicorn's exit status and output, once it has stopped by itself."""
    status = server.process.wait(timeout=60)
    return status, server.output()


MIGRATIONS = len(schema.migrations())
ALL_VERSIONS = list(range(1, MIGRATIONS + 1))


def test_a_database_made_before_migrations_is_upgraded_in_place(scratch_schema, conn, start_server):
    make_legacy_database(conn, stock=10, items=2)
    first = legacy_buy(conn, 1, "alice", 2, "order-1")
    legacy_buy(conn, 1, "bob", 1, "order-2")
    legacy_buy(conn, 2, "alice", 1, "order-3")
    before_rows = purchases(conn, 1) + purchases(conn, 2)
    before_items = run_test_query(conn, "list_items_raw")
    before_constraints = constraints(conn)

    status, output = refused_start(start_server())
    assert status != 0
    lines = [line for line in output.splitlines() if "older than the code" in line]
    assert len(lines) == 1 and f"0 of {MIGRATIONS} migrations applied" in lines[0], output
    assert "Run `flask --app app db upgrade`." in lines[0]
    assert "Traceback" not in output

    upgrade = flask_command("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "Applying 0001_create_items" in upgrade.stdout and f"{MIGRATIONS} applied now" in upgrade.stdout

    assert purchases(conn, 1) + purchases(conn, 2) == before_rows
    added = {"hold_seconds": None, "price": None, "currency": None}  # columns of later migrations
    assert [{**row, **added} for row in before_items] == run_test_query(conn, "list_items_raw")
    after_constraints = constraints(conn)
    changed = {("items", "items_check1")}  # the window's CHECK, now allowing an empty window
    assert {key: before_constraints[key] for key in before_constraints.keys() - changed} \
        == {key: after_constraints[key] for key in before_constraints.keys() - changed}
    assert after_constraints[("items", "items_sale_window_check")] == \
        "CHECK ((sale_ends_at >= sale_starts_at))"
    assert [row["version"] for row in run_test_query(conn, "list_applied_versions")] == ALL_VERSIONS

    again = flask_command("db", "upgrade")
    assert again.returncode == 0 and "0 applied now" in again.stdout

    created = flask_command("sale", "create", "--name", "After the upgrade", "--stock", "5")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "3"  # numbered after the items made before the upgrade

    with start_server() as server:
        sold = server.buy(1, "carol")
        assert sold.status_code == 201 and sold.json()["remaining"] == 6
        replay = server.buy(1, "alice", quantity=2, key="order-1")
        assert replay.status_code == 201 and replay.json()["purchase_id"] == first["purchase_id"]
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert server.buy(3, "dave").status_code == 201
    assert item(conn, 1)["sold"] == 4


PAYMENT_WINDOWS = 6  # the first migration of payment windows (holds)


def test_payment_windows_are_added_to_a_database_with_sales_and_purchases(scratch_schema, conn, start_server):
    """A database of the release before holds, with sales and purchases in it: the upgrade makes
    every purchase a confirmed one and every item one that sells at once, and sales go on as
    before beside a new sale with a payment window."""
    make_legacy_database(conn, stock=10, items=2)
    schema.upgrade(conn, until=PAYMENT_WINDOWS - 1)
    first = legacy_buy(conn, 1, "alice", 2, "order-1")
    legacy_buy(conn, 1, "bob", 1, "order-2")
    before = purchases(conn, 1)

    upgrade = flask_command("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"{MIGRATIONS - PAYMENT_WINDOWS + 1} applied now" in upgrade.stdout
    assert purchases(conn, 1) == before
    assert {row["status"] for row in purchase_states(conn)} == {"confirmed"}
    assert [row["hold_seconds"] for row in run_test_query(conn, "list_items_raw")] == [None, None]
    assert {"purchases_status_check", "purchases_hold_check"} <= {name for _, name in constraints(conn)}

    held = flask_command("sale", "create", "--name", "Held", "--stock", "3", "--hold-seconds", "60")
    assert held.returncode == 0 and held.stdout.strip() == "3", held.stderr
    with start_server() as server:
        replay = server.buy(1, "alice", quantity=2, key="order-1")
        assert replay.status_code == 201 and replay.json() == {
            "purchase_id": first["purchase_id"], "item_id": 1, "user_id": "alice", "quantity": 2, "remaining": 8}
        assert server.buy(1, "alice").json()["remaining"] == 6  # her third unit: the chain goes on
        hold = server.buy(3, "alice").json()
        assert hold["status"] == "held" and hold["remaining"] == 2
    assert item(conn, 1)["sold"] == 4 and item(conn, 3)["held"] == 1


def test_an_empty_database_is_made_by_the_migrations(scratch_schema, conn):
    with conn.transaction():
        conn.execute(db.query("drop_schema"))
    status = flask_command("db", "status")
    assert status.returncode == 0 and f"{MIGRATIONS} pending" in status.stdout
    assert flask_command("db", "upgrade").returncode == 0
    status = flask_command("db", "status")
    assert "pending" not in status.stdout and status.stdout.count(" applied ") == MIGRATIONS


def test_two_upgrades_at_once_take_turns(scratch_schema, conn):
    """The advisory lock: both succeed, and every migration is applied and recorded once."""
    with conn.transaction():
        conn.execute(db.query("drop_schema"))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: flask_command("db", "upgrade"), range(2)))
    assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]
    applied_now = sorted(int(result.stdout.split(", ")[-1].split()[0]) for result in results)
    assert applied_now == [0, MIGRATIONS]
    assert [row["version"] for row in run_test_query(conn, "list_applied_versions")] == ALL_VERSIONS


def test_the_code_knows_its_migrations_in_order():
    found = schema.migrations()
    assert [migration.version for migration in found] == list(range(1, len(found) + 1))
    for migration in found:
        assert migration.sql().startswith(f"-- Migration {migration.version:04d}.")
        assert "-- Parameters:" in migration.sql()


def wait_until_healthy(server):
    return wait_until_ready(server.url, 30, server.process, path="/healthz")


def test_gunicorn_starts_while_the_database_is_unreachable(start_server):
    """Its pool keeps trying: the process serves /healthz, and /readyz says not ready."""
    server = start_server(DATABASE_URL=UNREACHABLE)
    assert wait_until_healthy(server), server.output()
    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 503
    assert "could not check the database schema" in server.output()


def reset_db(*args):
    return subprocess.run([sys.executable, "reset_db.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_reset_db_refuses_to_delete_purchases_without_yes(reset, conn):
    reset(stock=10, items=2)
    db.buy_ticket(1, "alice", 1)
    db.buy_ticket(2, "bob", 2)
    refused = reset_db("--stock", "3")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "reset_db: this deletes 2 item(s) and 2 purchase(s).",
        "reset_db: nothing deleted; run again with --yes to delete them.",
    ]
    assert len(purchases(conn, 1)) == 1 and item(conn, 1)["stock"] == 10

    done = reset_db("--stock", "3", "--yes")
    assert done.returncode == 0, done.stderr
    assert "deletes 2 item(s) and 2 purchase(s)" in done.stderr
    assert purchases(conn, 1) == [] and item(conn, 1)["stock"] == 3 and item(conn, 2) is None


def test_reset_db_asks_nothing_when_no_purchase_would_be_lost(reset):
    reset(stock=5)
    result = reset_db("--stock", "4")
    assert result.returncode == 0 and result.stderr == ""
