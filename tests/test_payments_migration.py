"""Prices, amounts and payment events (migrations 0011 on) added to a database of the release
before them, with sales made, holds open and purchases confirmed in it."""
import pytest

import db
from flashsale import schema
from flashsale.payments import Event
from support import flask_command, make_legacy_database, purchase_states, run_test_query

BEFORE_PRICES = 10  # the last migration before prices


@pytest.fixture
def scratch_schema(reset):
    yield
    reset()


def release_8_purchase(conn, item_id, user_id, quantity, hold_seconds=None):
    return run_test_query(conn, "insert_release_8_purchase", {
        "item_id": item_id, "user_id": user_id, "quantity": quantity, "hold_seconds": hold_seconds})[0]["id"]


def payment(event_id, purchase_id, amount=1000, reference=None):
    return Event(event_id, "payment_intent.succeeded", "payment", purchase_id, amount, "EUR",
                 reference or f"pi_{event_id}").params()


def test_prices_and_payments_are_added_to_a_database_with_sales_holds_and_purchases(scratch_schema, conn):
    make_legacy_database(conn, stock=10, items=2)
    schema.upgrade(conn, until=BEFORE_PRICES)
    sold = release_8_purchase(conn, 1, "alice", 2)
    open_hold = release_8_purchase(conn, 1, "bob", 1, hold_seconds=600)
    other_hold = release_8_purchase(conn, 2, "carol", 3, hold_seconds=600)
    before = purchase_states(conn)

    upgrade = flask_command("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    applied = len(schema.migrations()) - BEFORE_PRICES
    assert "Applying 0011_add_item_prices" in upgrade.stdout and f"{applied} applied now" in upgrade.stdout
    assert purchase_states(conn) == before
    rows = {row["id"]: row for row in run_test_query(conn, "list_items_raw")}
    assert [(row["price"], row["currency"]) for row in rows.values()] == [(None, None), (None, None)]

    # A hold sold before prices owes no known amount: a payment for it is set aside for review, and
    # the hold runs on; the operator's word (the amount owed) confirms it.
    assert db.apply_payment_event(payment("evt_old_1", open_hold))["outcome"] == "under_review"
    assert {row["id"]: row["status"] for row in purchase_states(conn)}[open_hold] == "held"
    operator = Event(f"manual:{open_hold}:bank-1", "manual.payment", "payment", open_hold, None, None, "bank-1")
    assert db.apply_payment_event(operator.params())["outcome"] == "confirmed"
    # Money for the purchase sold at once is owed back: it was never asked for.
    assert db.apply_payment_event(payment("evt_old_2", sold))["outcome"] == "refund_due"
    statuses = {row["id"]: row["status"] for row in purchase_states(conn)}
    assert statuses == {sold: "confirmed", open_hold: "confirmed", other_hold: "held"}

    # A price set now applies to purchases made from now on.
    created = flask_command("sale", "create", "--name", "Priced", "--stock", "5", "--hold-seconds", "60",
                            "--price", "12.50", "--currency", "eur")
    assert created.returncode == 0, created.stderr
    row = db.buy_ticket(int(created.stdout), "dave", 2, "order-1")
    assert (row["outcome"], row["amount"], row["currency"]) == ("sold", 2500, "EUR")
