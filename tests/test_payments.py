"""Payments by Stripe webhook through real gunicorn: each outcome, redeliveries one after another
and at once, the same PaymentIntent by two events, late and second payments owed back, wrong
amounts set aside, secret rotation, refused deliveries that write nothing, and a 503 that Stripe's
retry applies once."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import db
from deploy.local_server import LocalServer
from support import (TOKEN_SECRET, assert_http_problem, bearer, item, mint, purchase_states, row_lock_held,
                     run_test_query, sample, scrape, scrape_when, set_expiry, wait_for_waiting_buyers)
from verify import QUERIES
from verify import stripe_events as stripe

SECRET, OLD_SECRET = "whsec_tests_new_0123456789", "whsec_tests_old_0123456789"
PRICE, CURRENCY = 1250, "EUR"
STOCK = 10


@pytest.fixture(scope="module")
def shop():
    """gunicorn in verified mode taking Stripe webhooks signed with either secret (a rotation)."""
    running = LocalServer(WEB_CONCURRENCY="2", AUTH_JWT_SECRET=TOKEN_SECRET, DB_RETRY_BUDGET_SECONDS="1",
                          STRIPE_WEBHOOK_SECRET=f"{SECRET}, {OLD_SECRET}")
    try:
        yield running.wait_ready()
    finally:
        running.stop()


@pytest.fixture
def sale(reset):
    reset(stock=STOCK, hold_seconds=600, price=PRICE, currency=CURRENCY)


def hold(shop, user="alice", quantity=1):
    answer = requests.post(f"{shop.url}/buy_ticket", json={"item_id": 1, "quantity": quantity},
                           headers=bearer(mint(user)), timeout=15)
    assert answer.status_code == 201, answer.text
    return answer.json()


def deliver(shop, event, secret=SECRET, **options):
    return stripe.deliver(shop.url, event, secret, **options)


def outcome(answer):
    assert answer.status_code == 200, answer.text
    return answer.json()["outcome"]


def purchase(shop, purchase_id, user="alice"):
    answer = requests.get(f"{shop.url}/purchases/{purchase_id}", headers=bearer(mint(user)), timeout=15)
    assert answer.status_code == 200, answer.text
    return answer.json()


def events(conn):
    return run_test_query(conn, "list_payment_events")


def status(conn, purchase_id):
    return {row["id"]: row["status"] for row in purchase_states(conn)}[purchase_id]


def test_a_payment_of_the_amount_owed_confirms_the_hold(shop, sale, conn):
    held = hold(shop, quantity=2)
    assert (held["status"], held["amount"], held["currency"]) == ("held", 2 * PRICE, CURRENCY)
    assert purchase(shop, held["purchase_id"])["payment"] is None
    paid = stripe.checkout_completed(held["purchase_id"], 2 * PRICE, "eur")
    answer = deliver(shop, paid)
    assert answer.json() == {"received": True, "outcome": "confirmed", "purchase_id": held["purchase_id"]}
    shown = purchase(shop, held["purchase_id"])
    reference = paid["data"]["object"]["payment_intent"]
    assert (shown["status"], shown["amount"], shown["currency"]) == ("confirmed", 2 * PRICE, CURRENCY)
    assert shown["payment"] == {"status": "paid", "amount": 2 * PRICE, "currency": CURRENCY, "reference": reference}
    assert (item(conn)["sold"], item(conn)["held"], item(conn)["remaining"]) == (2, 0, STOCK - 2)


def test_a_redelivery_changes_nothing_and_answers_200_again(shop, sale, conn):
    held = hold(shop)
    paid = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    assert outcome(deliver(shop, paid)) == "confirmed"
    before = (events(conn), purchase_states(conn), item(conn))
    again = deliver(shop, paid)
    assert again.json() == {"received": True, "outcome": "duplicate", "first_outcome": "confirmed",
                            "purchase_id": held["purchase_id"]}
    assert (events(conn), purchase_states(conn), item(conn)) == before


def test_concurrent_deliveries_of_one_event_apply_it_once(shop, sale, conn):
    held = hold(shop)
    paid = stripe.checkout_completed(held["purchase_id"], PRICE, "eur")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: outcome(deliver(shop, paid)), range(16)))
    assert sorted(set(outcomes)) == ["confirmed", "duplicate"] and outcomes.count("confirmed") == 1
    assert [row["outcome"] for row in events(conn)] == ["confirmed"]
    assert status(conn, held["purchase_id"]) == "confirmed" and item(conn)["sold"] == 1


def test_one_payment_announced_by_two_events_is_one_payment(shop, sale, conn):
    held = hold(shop)
    completed = stripe.checkout_completed(held["purchase_id"], PRICE, "eur")
    intent = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur",
                                     intent_id=completed["data"]["object"]["payment_intent"])
    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda evt: outcome(deliver(shop, evt)), [completed, intent]))
    assert outcomes == ["confirmed", "duplicate"]
    assert [row["payment_status"] for row in events(conn)].count("paid") == 1
    assert "refund_due" not in [row["payment_status"] for row in events(conn)]


def test_a_second_payment_is_owed_back_and_the_purchase_stays_paid(shop, sale, conn):
    held = hold(shop)
    assert outcome(deliver(shop, stripe.checkout_completed(held["purchase_id"], PRICE, "eur"))) == "confirmed"
    second = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    assert outcome(deliver(shop, second)) == "refund_due"
    shown = purchase(shop, held["purchase_id"])
    assert shown["status"] == "confirmed"
    assert shown["payment"] == {"status": "refund_due", "amount": PRICE, "currency": CURRENCY,
                                "reference": second["data"]["object"]["id"]}
    assert item(conn)["sold"] == 1


def test_a_late_payment_takes_no_units_back_and_is_owed_back(shop, sale, conn):
    held = hold(shop, quantity=STOCK)
    set_expiry(conn, held["purchase_id"], -1)
    later = hold(shop, user="bob", quantity=STOCK)  # the units went to the next buyer
    assert outcome(deliver(shop, stripe.checkout_completed(held["purchase_id"], STOCK * PRICE, "eur"))) == "late"
    assert status(conn, held["purchase_id"]) == "expired" and status(conn, later["purchase_id"]) == "held"
    assert purchase(shop, held["purchase_id"])["payment"]["status"] == "refund_due"
    assert (item(conn)["held"], item(conn)["remaining"]) == (STOCK, 0)


def test_a_payment_after_a_cancel_is_owed_back(shop, sale, conn):
    held = hold(shop)
    cancelled = requests.post(f"{shop.url}/purchases/{held['purchase_id']}/cancel", headers=bearer(mint("alice")),
                              timeout=15)
    assert cancelled.status_code == 200
    assert outcome(deliver(shop, stripe.intent_succeeded(held["purchase_id"], PRICE, "eur"))) == "late"
    assert status(conn, held["purchase_id"]) == "cancelled" and item(conn)["remaining"] == STOCK


@pytest.mark.parametrize("amount, currency", [(PRICE - 1, "eur"), (PRICE, "usd"), (PRICE * 2, "eur")])
def test_a_wrong_amount_or_currency_is_set_aside_and_the_hold_runs_on(shop, sale, conn, amount, currency):
    held = hold(shop)
    assert outcome(deliver(shop, stripe.intent_succeeded(held["purchase_id"], amount, currency))) == "under_review"
    assert status(conn, held["purchase_id"]) == "held"
    assert purchase(shop, held["purchase_id"])["payment"]["status"] == "under_review"
    assert outcome(deliver(shop, stripe.intent_succeeded(held["purchase_id"], PRICE, "eur"))) == "confirmed"
    assert status(conn, held["purchase_id"]) == "confirmed"


def test_a_failure_after_a_success_never_undoes_it(shop, sale, conn):
    held = hold(shop)
    paid = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    failed = stripe.intent_failed(held["purchase_id"], PRICE, "eur", intent_id=paid["data"]["object"]["id"])
    assert outcome(deliver(shop, paid)) == "confirmed"
    assert outcome(deliver(shop, failed)) == "ignored"
    assert outcome(deliver(shop, stripe.async_payment_failed(held["purchase_id"], PRICE, "eur"))) == "ignored"
    assert status(conn, held["purchase_id"]) == "confirmed"
    assert purchase(shop, held["purchase_id"])["payment"]["status"] == "paid"


def test_an_unpaid_checkout_then_its_async_payment(shop, sale, conn):
    held = hold(shop)
    unpaid = stripe.checkout_completed(held["purchase_id"], PRICE, "eur", payment_status="unpaid")
    assert outcome(deliver(shop, unpaid)) == "ignored"
    assert status(conn, held["purchase_id"]) == "held" and purchase(shop, held["purchase_id"])["payment"] is None
    arrived = stripe.async_payment_succeeded(held["purchase_id"], PRICE, "eur",
                                             payment_intent=unpaid["data"]["object"]["payment_intent"])
    assert outcome(deliver(shop, arrived)) == "confirmed"


def test_an_expired_checkout_cancels_the_hold_at_once(shop, sale, conn):
    held = hold(shop, quantity=3)
    assert item(conn)["remaining"] == STOCK - 3
    assert outcome(deliver(shop, stripe.checkout_expired(held["purchase_id"]))) == "cancelled"
    assert status(conn, held["purchase_id"]) == "cancelled" and item(conn)["remaining"] == STOCK
    assert outcome(deliver(shop, stripe.checkout_expired(held["purchase_id"]))) == "ignored"  # another session
    assert outcome(deliver(shop, stripe.intent_succeeded(held["purchase_id"], 3 * PRICE, "eur"))) == "late"
    assert item(conn)["remaining"] == STOCK


def test_events_for_no_purchase_or_of_other_types_are_answered_200(shop, sale, conn):
    assert outcome(deliver(shop, stripe.intent_succeeded(999999, PRICE, "eur"))) == "ignored"
    assert outcome(deliver(shop, stripe.intent_succeeded(None, PRICE, "eur"))) == "ignored"
    odd = stripe.intent_succeeded(None, PRICE, "eur")
    odd["data"]["object"]["metadata"] = {"purchase_id": "1; DROP TABLE purchases"}
    assert outcome(deliver(shop, odd)) == "ignored"
    assert outcome(deliver(shop, stripe.event("customer.created", {"id": "cus_1", "object": "customer"}))) == "ignored"
    assert [row["outcome"] for row in events(conn)] == ["ignored"] * 3  # the customer event is not stored
    assert item(conn)["remaining"] == STOCK


def test_either_secret_of_a_rotation_verifies(shop, sale, conn):
    first, second = hold(shop), hold(shop, user="bob")
    assert outcome(deliver(shop, stripe.intent_succeeded(first["purchase_id"], PRICE, "eur"), OLD_SECRET)) == "confirmed"
    assert outcome(deliver(shop, stripe.intent_succeeded(second["purchase_id"], PRICE, "eur"), SECRET)) == "confirmed"
    other = deliver(shop, stripe.intent_succeeded(first["purchase_id"], PRICE, "eur"), "whsec_someone_else")
    assert_http_problem(other, 400, "invalid_signature")


def signed_post(shop, payload, header):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return requests.post(f"{shop.url}{stripe.WEBHOOK_PATH}", data=payload, headers=headers, timeout=15)


def refusals(purchase_id):
    event = stripe.body(stripe.intent_succeeded(purchase_id, PRICE, "eur"))
    now = int(time.time())
    good = stripe.signature(event, SECRET, now)
    tampered = event.replace(f'"amount_received":{PRICE}', '"amount_received":1')
    return [
        ("no header", event, None, "missing_signature"),
        ("empty header", event, "", "missing_signature"),
        ("malformed", event, "v1=abc", "invalid_signature"),
        ("no v1", event, f"t={now},v0=abc", "invalid_signature"),
        ("wrong secret", event, stripe.signature(event, "whsec_wrong", now), "invalid_signature"),
        ("too old", event, stripe.signature(event, SECRET, now - 301), "invalid_signature"),
        ("ahead", event, stripe.signature(event, SECRET, now + 600), "invalid_signature"),
        ("changed after signing", tampered, good, "invalid_signature"),
        ("not ASCII", event, good + ",v1=é", "invalid_signature"),
        ("not JSON", "{not json", stripe.signature("{not json", SECRET, now), "invalid_event"),
        ("not an event", "[1, 2]", stripe.signature("[1, 2]", SECRET, now), "invalid_event"),
        ("no object", '{"id": "evt_1", "type": "payment_intent.succeeded"}',
         stripe.signature('{"id": "evt_1", "type": "payment_intent.succeeded"}', SECRET, now), "invalid_event"),
    ]


def test_refused_deliveries_write_nothing(shop, sale, conn):
    held = hold(shop)
    for name, payload, header, code in refusals(held["purchase_id"]):
        answer = signed_post(shop, payload.encode(), header.encode("utf-8").decode("latin-1") if header else header)
        assert_http_problem(answer, 400, code)
    assert events(conn) == [] and status(conn, held["purchase_id"]) == "held"


def test_without_a_secret_the_route_is_not_there(server, sale):
    answer = stripe.deliver(server.url, stripe.intent_succeeded(1, PRICE, "eur"), SECRET)
    assert_http_problem(answer, 404, "payments_not_configured")


def test_an_event_may_be_up_to_64_kib(shop, sale, conn):
    held = hold(shop)
    big = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    big["data"]["object"]["description"] = "x" * 60000  # a purchase's 4 KiB would refuse it
    assert outcome(deliver(shop, big)) == "confirmed"
    bigger = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    bigger["data"]["object"]["description"] = "x" * 70000
    assert_http_problem(deliver(shop, bigger), 413, "payload_too_large")
    assert len(events(conn)) == 1


def test_a_database_that_does_not_answer_is_503_and_the_retry_applies_it_once(shop, sale, conn):
    held = hold(shop)
    paid = stripe.intent_succeeded(held["purchase_id"], PRICE, "eur")
    with db.connect() as hog, hog.transaction():
        hog.execute(db.query("lock_purchase", QUERIES), {"purchase_id": held["purchase_id"]})
        answer = deliver(shop, paid)  # waits for the lock past the 1 s budget
    assert_http_problem(answer, 503, "overloaded")
    assert answer.headers["Retry-After"] == "1"
    assert events(conn) == [] and status(conn, held["purchase_id"]) == "held"
    assert outcome(deliver(shop, paid)) == "confirmed"
    assert outcome(deliver(shop, paid)) == "duplicate"


def test_a_payment_and_the_expiry_racing_agree(shop, sale, conn):
    """The payment waits on the purchase's row lock while the hold's expiry passes and the next
    buyer's purchase (which expires it) queues too; whichever the lock lets in first decides, and
    the answers, the purchase and the item agree."""
    held = hold(shop, quantity=STOCK)
    set_expiry(conn, held["purchase_id"], 0.5)
    with ThreadPoolExecutor(2) as pool:
        with row_lock_held(1):  # the item's: the next buyer waits for it
            with db.connect() as hog, hog.transaction():
                hog.execute(db.query("lock_purchase", QUERIES), {"purchase_id": held["purchase_id"]})
                paying = pool.submit(deliver, shop, stripe.intent_succeeded(held["purchase_id"], STOCK * PRICE, "eur"))
                time.sleep(0.6)  # the expiry passes while both wait
                buying = pool.submit(buy_any, shop)
                assert wait_for_waiting_buyers(conn, 1)
        paid, bought = outcome(paying.result()), buying.result()
    final = status(conn, held["purchase_id"])
    assert paid in ("confirmed", "late")
    if paid == "confirmed":
        assert final == "confirmed" and bought.status_code == 409 and item(conn)["sold"] == STOCK
    else:
        assert final == "expired" and bought.status_code == 201 and item(conn)["sold"] == 0


def buy_any(shop):
    return requests.post(f"{shop.url}/buy_ticket", json={"item_id": 1, "quantity": STOCK},
                         headers=bearer(mint("bob")), timeout=15)


def test_metrics_count_deliveries_by_type_and_outcome_and_read_the_money(shop, sale, conn):
    held, late = hold(shop, quantity=2), hold(shop, user="bob")
    set_expiry(conn, late["purchase_id"], -1)
    assert outcome(deliver(shop, stripe.checkout_completed(held["purchase_id"], 2 * PRICE, "eur"))) == "confirmed"
    assert outcome(deliver(shop, stripe.intent_succeeded(late["purchase_id"], PRICE, "eur"))) == "late"
    assert_http_problem(deliver(shop, stripe.intent_succeeded(held["purchase_id"], PRICE, "eur"), "whsec_x"),
                        400, "invalid_signature")

    def counted(samples):
        return (sample(samples, "flashsale_webhook_events_total", type="checkout.session.completed",
                       outcome="confirmed"),
                sample(samples, "flashsale_webhook_events_total", type="payment_intent.succeeded", outcome="late"),
                sample(samples, "flashsale_webhook_events_total", type="unverified", outcome="rejected"))

    before = counted(scrape(shop.url))
    samples = scrape_when(shop.url, lambda found: all(now > then for now, then in zip(counted(found), before)))
    assert sample(samples, "flashsale_payments_amount", item_id="1", currency="EUR", status="paid") == 2 * PRICE
    assert sample(samples, "flashsale_payments_amount", item_id="1", currency="EUR", status="refund_due") == PRICE
    assert all(after >= 1 for after in counted(samples))
