"""The operators' side of payments: `flask sale confirm` for a payment taken elsewhere, decided as a
webhook's; `flask payments refunds`, `refunded` and `review`; prices in `sale create`, `show`,
`list` and `export`; a bad STRIPE_WEBHOOK_SECRET."""
import sys

import pytest

import db
from flashsale.payments import Event
from support import flask_command, item, purchase_states, run, set_expiry

PRICE, CURRENCY = 4990, "EUR"


@pytest.fixture
def sale(reset):
    reset(stock=10, hold_seconds=600, price=PRICE, currency=CURRENCY)


def hold(user, quantity=1):
    return db.buy_ticket(1, user, quantity, f"{user}-order")["purchase_id"]


def states():
    with db.connect() as conn:
        return {row["id"]: row["status"] for row in purchase_states(conn)}


def test_an_operator_confirms_a_bank_transfer_once(sale, conn):
    alice = hold("alice", 2)
    done = flask_command("sale", "confirm", alice, "--reference", "bank 4411")
    assert done.returncode == 0 and "confirmed, paid 99.80 EUR (bank 4411)" in done.stdout, done.stderr
    again = flask_command("sale", "confirm", alice, "--reference", "bank 4411")
    assert again.returncode == 0 and "recorded before (confirmed); nothing changed" in again.stdout
    assert states()[alice] == "confirmed" and item(conn)["sold"] == 2


def test_a_late_confirmation_is_owed_back_and_refunded_once(sale, conn):
    bob = hold("bob")
    set_expiry(conn, bob, -1)
    late = flask_command("sale", "confirm", bob, "--reference", "bank 7")
    assert late.returncode == 1 and "not confirmed: its hold had expired" in late.stderr
    assert states()[bob] != "confirmed"
    owed = flask_command("payments", "refunds")
    assert owed.returncode == 0
    assert [line.split()[:4] for line in owed.stdout.splitlines()[1:-1]] == [[str(bob), "bob", "1", "49.90"]]
    shown = flask_command("sale", "show", 1)
    assert "revenue:      0.00 EUR (1 refunds owed)" in shown.stdout, shown.stdout

    refunded = flask_command("payments", "refunded", bob, "--reference", "re_1")
    assert refunded.returncode == 0 and "refund re_1 of 49.90 EUR" in refunded.stdout, refunded.stderr
    twice = flask_command("payments", "refunded", bob, "--reference", "re_1")
    assert twice.returncode == 0 and "recorded before" in twice.stdout
    nothing = flask_command("payments", "refunded", bob, "--reference", "re_2")
    assert nothing.returncode == 2 and nothing.stderr == f"flask payments refunded: purchase {bob} is owed nothing back\n"
    assert flask_command("payments", "refunds").stdout.endswith("0 refunds owed.\n")


def test_a_payment_set_aside_is_listed_for_review(sale):
    carol = hold("carol")
    db.apply_payment_event(Event("evt_short", "payment_intent.succeeded", "payment", carol, 100, "EUR", "pi_1").params())
    review = flask_command("payments", "review")
    assert [line.split()[:5] for line in review.stdout.splitlines()[1:-1]] == [
        [str(carol), "carol", "1", "1.00", "EUR"]]
    assert states()[carol] == "held"
    refunded = flask_command("payments", "refunded", carol, "--reference", "re_short", "--payment", "pi_1")
    assert refunded.returncode == 0 and "refund re_short of 1.00 EUR (payment pi_1) recorded" in refunded.stdout
    assert flask_command("payments", "review").stdout.endswith("0 payments under review.\n")
    assert states()[carol] == "held"  # the hold runs on: the buyer may still pay what it owes


@pytest.mark.parametrize("args, message", [
    (["--price", "0.5", "--currency", "JPY"], "'0.5' is not a price in JPY, which has 0 decimals"),
    (["--price", "1.234", "--currency", "EUR"], "which has 2 decimals"),
    (["--price", "-1", "--currency", "EUR"], "is not a price in EUR"),
    (["--price", "1", "--currency", "EURO"], "is not an ISO 4217 currency code"),
    (["--price", "1", "--currency", "ABC"], "is not an ISO 4217 currency code"),
    (["--price", "1"], "--price and --currency go together"),
])
def test_a_bad_price_is_one_line_and_nothing_is_made(reset, args, message):
    reset()
    made = flask_command("sale", "create", "--name", "x", "--stock", "1", *args)
    assert made.returncode == 2 and message in made.stderr and len(made.stderr.splitlines()) == 1, made.stderr
    assert flask_command("sale", "list").stdout.count("\n") == 2  # the header and item 1


@pytest.mark.parametrize("price, currency, minor, shown", [
    ("49.90", "eur", 4990, "49.90 EUR"), ("4990", "JPY", 4990, "4990 JPY"), ("4.990", "KWD", 4990, "4.990 KWD")])
def test_the_minor_units_of_each_currency_come_from_cldr(reset, price, currency, minor, shown):
    reset()
    made = flask_command("sale", "create", "--name", "x", "--stock", "3", "--hold-seconds", "60",
                         "--price", price, "--currency", currency)
    assert made.returncode == 0, made.stderr
    row = db.buy_ticket(int(made.stdout), "dave", 2, "dave-1")
    assert (row["amount"], row["currency"]) == (2 * minor, currency.upper())
    assert f"price:        {shown}" in flask_command("sale", "show", made.stdout.strip()).stdout


def test_export_shows_amounts_and_payments(sale):
    alice, bob = hold("alice"), hold("bob")
    flask_command("sale", "confirm", alice, "--reference", "bank 1")
    exported = flask_command("sale", "export", 1)
    assert exported.stdout.splitlines()[0] == \
        "purchase_id,user_id,quantity,created_at,status,amount,currency,payment,reference"
    rows = [line.split(",") for line in exported.stdout.splitlines()[1:]]
    assert [(row[0], row[4], row[5], row[6], row[7], row[8]) for row in rows] == [
        (str(alice), "confirmed", "4990", "EUR", "paid", "bank 1"), (str(bob), "held", "4990", "EUR", "", "")]


@pytest.mark.parametrize("value", ["sk_live_123", "whsec_", "whsec_ok,secret", "whsec_é"])
def test_a_bad_webhook_secret_is_one_line_and_exit_2(value):
    result = run([sys.executable, "-m", "flashsale.settings"], STRIPE_WEBHOOK_SECRET=value)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("Invalid configuration: STRIPE_WEBHOOK_SECRET must be Stripe's signing secret "
                             "(whsec_...), or several separated by commas\n"), result.stderr


def test_the_proof_of_a_held_sale_needs_the_webhook_secret():
    result = run([sys.executable, "proof_of_correctness.py", "--hold-seconds", "3"], STRIPE_WEBHOOK_SECRET="")
    assert result.returncode == 2 and "STRIPE_WEBHOOK_SECRET (or --webhook-secret) is not set" in result.stderr
