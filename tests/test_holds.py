"""Holds: a sale with a payment window, paid for (by the payment provider: tests/test_payments.py
has the webhook itself) or cancelled, and expiry exactly once, through Flask's test client and real
gunicorn on the real database."""
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests

import db
from flashsale.payments import Event
from support import (assert_http_problem, assert_problem, bearer, buy, flask_command, frozen_database, item,
                     mint, purchase_states, run_test_query, sample, scrape, scrape_when, set_expiry, wait_for)
from verify import stripe_events as stripe

HOLD_SECONDS = 600  # long enough never to pass by itself: the tests move expiries with set_expiry
PRICE = 100  # cents of EUR, for the sales paid by webhook
SECRET = "whsec_tests_holds"


@pytest.fixture
def held_sale(reset):
    """Item 1 with 10 units, at most 4 per buyer, each purchase held HOLD_SECONDS for payment."""
    reset(stock=10, max_per_user=4, hold_seconds=HOLD_SECONDS)


def pay(purchase_id, event_id=None):
    """The payment provider says that the amount owed arrived: the outcome of
    apply_payment_event.sql, as a webhook's (or `flask sale confirm`'s) payment."""
    event_id = event_id or f"evt_{purchase_id}_{time.monotonic_ns()}"
    return db.apply_payment_event(Event(event_id, "payment_intent.succeeded", "payment", purchase_id, None, None,
                                        f"pi_{event_id}").params())["outcome"]


def pay_by_webhook(server, purchase_id, quantity=1, timeout=15):
    return stripe.deliver(server.url, stripe.intent_succeeded(purchase_id, quantity * PRICE, "eur"), SECRET,
                          timeout=timeout)


def cancel(client, purchase_id, user_id="alice"):
    return client.post(f"/purchases/{purchase_id}/cancel", json={"user_id": user_id})


def state(conn, purchase_id):
    return next(row for row in purchase_states(conn) if row["id"] == purchase_id)


def conserved(conn, item_id=1):
    """The item's stored stock − remaining is exactly the units of its rows still 'held' or
    'confirmed': no unit lost or returned twice."""
    [found] = [row for row in run_test_query(conn, "list_items_raw") if row["id"] == item_id]
    taken = sum(row["quantity"] for row in purchase_states(conn)
                if row["item_id"] == item_id and row["status"] in ("held", "confirmed"))
    return found["stock"] - found["remaining"] == taken


def test_a_hold_takes_the_units_at_once_until_its_expiry(client, held_sale, conn):
    before = datetime.now(timezone.utc)
    response = buy(client, quantity=3)
    assert response.status_code == 201
    body = response.get_json()
    expires_at = datetime.fromisoformat(body.pop("expires_at"))
    assert body == {"purchase_id": body["purchase_id"], "item_id": 1, "user_id": "alice", "quantity": 3,
                    "remaining": 7, "status": "held", "amount": None, "currency": None}  # no price
    assert expires_at.tzinfo == timezone.utc and response.get_json()["expires_at"].endswith("Z")
    assert 0 < (expires_at - before).total_seconds() - HOLD_SECONDS < 5
    assert (item(conn)["remaining"], item(conn)["held"], item(conn)["sold"]) == (7, 3, 0)
    assert state(conn, body["purchase_id"])["status"] == "held"


def test_an_item_without_a_payment_window_sells_at_once(client, conn):
    body = buy(client).get_json()
    assert "status" not in body and "expires_at" not in body
    assert state(conn, body["purchase_id"])["status"] == "confirmed"
    assert state(conn, body["purchase_id"])["expires_at"] is None
    assert pay(body["purchase_id"]) == "refund_due"  # nothing was asked for: money owed back
    assert_problem(cancel(client, body["purchase_id"]), 409, "purchase_confirmed")


def test_a_payment_confirms_the_hold_once_and_for_good(client, held_sale, conn):
    purchase_id = buy(client, quantity=2).get_json()["purchase_id"]
    assert pay(purchase_id, "evt_1") == "confirmed"
    assert pay(purchase_id, "evt_1") == "duplicate"
    assert_problem(cancel(client, purchase_id), 409, "purchase_confirmed")
    row = state(conn, purchase_id)
    assert row["status"] == "confirmed" and row["settled_at"] < row["expires_at"]
    assert (item(conn)["remaining"], item(conn)["held"], item(conn)["sold"]) == (8, 0, 2)


def test_cancel_returns_the_units_at_once_and_is_idempotent(client, held_sale, conn):
    purchase_id = buy(client, quantity=4).get_json()["purchase_id"]
    assert item(conn)["remaining"] == 6
    cancelled = cancel(client, purchase_id)
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert item(conn)["remaining"] == 10
    assert cancel(client, purchase_id).status_code == 200
    assert item(conn)["remaining"] == 10  # returned once
    assert pay(purchase_id) == "late"  # owed back: the units stay on sale
    assert buy(client, user_id="bob", quantity=4).status_code == 201


def test_an_expired_hold_cannot_be_paid_for_and_its_units_come_back_once(client, held_sale, conn):
    purchase_id = buy(client, quantity=4).get_json()["purchase_id"]
    set_expiry(conn, purchase_id, -1)
    # Nothing has expired the row yet, but every reader sees the hold as expired.
    assert state(conn, purchase_id)["status"] == "held"
    assert item(conn)["remaining"] == 10 and item(conn)["held"] == 0
    assert pay(purchase_id) == "late"
    problem = assert_problem(cancel(client, purchase_id), 409, "hold_expired")
    assert "expired at" in problem["detail"]
    # The next purchase of the item expires it, and sells from the units it got back.
    assert buy(client, user_id="bob", quantity=4).get_json()["remaining"] == 6
    row = state(conn, purchase_id)
    assert row["status"] == "expired" and row["settled_at"] >= row["expires_at"]
    with db.connect() as sweeper:
        assert db.expire_holds(sweeper) == []  # nothing left to expire: nothing returned twice
    assert item(conn)["remaining"] == 6 and conserved(conn)


def test_a_refused_purchase_still_returns_the_expired_units_it_finds(client, held_sale, conn):
    """The statement that expires a hold writes its units back whatever it answers."""
    assert buy(client, user_id="bob", quantity=4).status_code == 201
    expiring = buy(client, user_id="carol", quantity=4).get_json()["purchase_id"]
    assert buy(client, quantity=2).status_code == 201
    set_expiry(conn, expiring, -1)
    assert_problem(buy(client, quantity=3), 409, "limit_reached")  # alice has 2 of 4
    assert state(conn, expiring)["status"] == "expired"
    assert conserved(conn) and item(conn)["remaining"] == 4


def test_the_limit_counts_held_and_confirmed_units_not_expired_or_cancelled(client, held_sale, conn):
    first = buy(client, quantity=2).get_json()["purchase_id"]
    second = buy(client, quantity=2).get_json()["purchase_id"]
    assert_problem(buy(client), 409, "limit_reached")  # 4 held
    assert pay(first) == "confirmed"
    assert_problem(buy(client), 409, "limit_reached")  # 2 confirmed, 2 held
    assert cancel(client, second).status_code == 200
    third = buy(client, quantity=2).get_json()["purchase_id"]  # 2 confirmed, 2 held
    assert_problem(buy(client), 409, "limit_reached")
    set_expiry(conn, third, -1)
    assert buy(client, quantity=2).status_code == 201  # 2 confirmed, 2 held again
    assert_problem(buy(client), 409, "limit_reached")
    assert conserved(conn)


def test_a_replayed_hold_answers_as_the_first_time(client, held_sale, conn):
    headers = {"Idempotency-Key": "order-1"}
    first = buy(client, headers, quantity=2)
    assert pay(first.get_json()["purchase_id"]) == "confirmed"
    replay = buy(client, headers, quantity=2)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    assert item(conn)["remaining"] == 8


def test_a_sweep_expires_every_due_hold_once(client, reset, conn):
    reset(stock=5, items=3, hold_seconds=HOLD_SECONDS)
    ids = [buy(client, item_id=item_id, user_id=f"user-{item_id}", quantity=item_id).get_json()["purchase_id"]
           for item_id in (1, 2, 3)]
    for purchase_id in ids[:2]:
        set_expiry(conn, purchase_id, -1)
    with db.connect() as sweeper:
        swept = db.expire_holds(sweeper)
    assert sorted((row["item_id"], row["holds"], row["units"]) for row in swept) == [(1, 1, 1), (2, 1, 2)]
    assert [item(conn, n)["remaining"] for n in (1, 2, 3)] == [5, 5, 2]
    assert [state(conn, n)["status"] for n in ids] == ["expired", "expired", "held"]


def test_the_expire_command_sweeps_by_hand(client, held_sale, conn):
    purchase_id = buy(client, quantity=3).get_json()["purchase_id"]
    set_expiry(conn, purchase_id, -1)
    result = flask_command("sale", "expire")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Expired 1 holds of 1 items: 3 units back on sale."
    assert state(conn, purchase_id)["status"] == "expired" and item(conn)["remaining"] == 10
    assert flask_command("sale", "expire").stdout.strip() == "Expired 0 holds of 0 items: 0 units back on sale."


# Races through real gunicorn: whoever comes first wins, and the rest agree with the database.

def test_payments_cancels_sweeps_and_buyers_racing_on_expiring_holds_return_units_once(start_server, reset, conn):
    """Holds that expire while they are paid for (by webhook) or cancelled by their owners,
    sweepers on two more sessions sweep, and new buyers buy the units back: each hold ends one way,
    its answers agree with its row, and its units come back once."""
    reset(stock=40, max_per_user=40, hold_seconds=HOLD_SECONDS, price=PRICE, currency="EUR")
    server = start_server(WEB_CONCURRENCY="4", HOLD_SWEEP_SECONDS="0", STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    holds = [server.buy(user_id=f"owner-{n}").json()["purchase_id"] for n in range(40)]
    for number, purchase_id in enumerate(holds):
        set_expiry(conn, purchase_id, 0.05 + 0.01 * (number % 10))  # due within a tenth of a second
    answers = {}

    def settle(number, purchase_id):
        if number % 2:
            answers[purchase_id] = ("pay", pay_by_webhook(server, purchase_id).json()["outcome"])
        else:
            response = requests.post(f"{server.url}/purchases/{purchase_id}/cancel",
                                     json={"user_id": f"owner-{number}"}, timeout=15)
            answers[purchase_id] = ("cancel", response.json().get("code") or "cancelled")

    def sweep(rounds=30):
        with db.connect() as sweeper:
            for _ in range(rounds):
                db.expire_holds(sweeper)
                time.sleep(0.005)

    with ThreadPoolExecutor(16) as pool:
        sweeps = [pool.submit(sweep) for _ in range(2)]
        buyers = [pool.submit(server.buy, user_id=f"late-{n}") for n in range(40)]
        settles = [pool.submit(settle, n, p) for n, p in enumerate(holds)]
        for future in sweeps + buyers + settles:
            future.result()
    with db.connect() as sweeper:
        db.expire_holds(sweeper)
    rows = {row["id"]: row for row in purchase_states(conn)}
    for purchase_id, (action, outcome) in answers.items():
        final = rows[purchase_id]["status"]
        if outcome in ("confirmed", "cancelled"):
            assert final == outcome, (action, final)
        else:
            assert (outcome, final) == ({"pay": "late", "cancel": "hold_expired"}[action], "expired"), (action, final)
    sold = sum(response.result().status_code == 201 for response in buyers)
    assert all(response.result().status_code in (201, 409) for response in buyers)
    assert "held" not in {row["status"] for row in rows.values() if row["user_id"].startswith("owner")}
    assert conserved(conn)
    settled = sum(outcome in ("confirmed", "cancelled") for _, outcome in answers.values())
    print(f"{settled} settled in time, {len(answers) - settled} expired first; {sold} late buyers served")


def test_parallel_buys_of_one_buyer_never_exceed_the_limit_with_holds_changing(start_server, reset, conn):
    reset(stock=100, max_per_user=3, hold_seconds=HOLD_SECONDS, price=PRICE, currency="EUR")
    server = start_server(WEB_CONCURRENCY="4", STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    first = server.buy(user_id="alice").json()["purchase_id"]
    second = server.buy(user_id="alice").json()["purchase_id"]
    with ThreadPoolExecutor(12) as pool:
        settles = [pool.submit(requests.post, f"{server.url}/purchases/{first}/cancel",
                               json={"user_id": "alice"}, timeout=15),
                   pool.submit(pay_by_webhook, server, second)]
        buys = [pool.submit(server.buy, user_id="alice") for _ in range(10)]
        assert all(future.result().status_code == 200 for future in settles)
        assert settles[1].result().json()["outcome"] == "confirmed"
        statuses = sorted(future.result().status_code for future in buys)
    assert statuses == [201] * 2 + [409] * 8  # 1 confirmed + 2 held = the limit of 3
    assert item(conn)["sold"] + item(conn)["held"] == 3 and conserved(conn)


def test_each_workers_sweeper_expires_holds_nobody_buys_and_counts_them(start_server, reset, conn):
    reset(stock=5, hold_seconds=HOLD_SECONDS)
    server = start_server(WEB_CONCURRENCY="2", HOLD_SWEEP_SECONDS="0.1").wait_ready()
    purchase_id = server.buy(user_id="alice", quantity=2).json()["purchase_id"]
    samples = scrape_when(server.url, lambda found: sample(found, "flashsale_holds_total", event="made") == 1)
    assert sample(samples, "flashsale_holds_total", event="made") == 1
    assert sample(samples, "flashsale_units_held", item_id="1") == 2
    set_expiry(conn, purchase_id, -1)
    assert wait_for(lambda: state(conn, purchase_id)["status"] == "expired")
    samples = scrape_when(server.url, lambda found: sample(found, "flashsale_holds_total", event="expired") == 1)
    assert sample(samples, "flashsale_holds_total", event="expired") == 1
    assert sample(samples, "flashsale_units_held", item_id="1") == 0
    assert item(conn)["remaining"] == 5


def test_two_app_hosts_sweeping_at_once_expire_each_hold_once(start_server, reset, conn):
    """Every worker of two servers (the cluster's two app hosts) sweeps every 50 ms: the holds
    all expire, once each, and the two servers' counts add up to them."""
    reset(stock=50, items=4, hold_seconds=HOLD_SECONDS)
    hosts = [start_server(WEB_CONCURRENCY="3", HOLD_SWEEP_SECONDS="0.05").wait_ready() for _ in range(2)]
    ids = [hosts[n % 2].buy(item_id=1 + n % 4, user_id=f"user-{n}").json()["purchase_id"] for n in range(120)]
    for purchase_id in ids:
        set_expiry(conn, purchase_id, -1)
    assert wait_for(lambda: all(row["status"] == "expired" for row in purchase_states(conn)), seconds=30)
    assert all(conserved(conn, item_id) for item_id in range(1, 5))

    def counted():
        return [sample(scrape(host.url), "flashsale_holds_total", event="expired") for host in hosts]

    assert wait_for(lambda: sum(counted()) == 120), counted()


def test_sold_out_is_remembered_only_until_the_first_hold_expires(start_server, reset):
    reset(stock=1, hold_seconds=1)
    server = start_server(WEB_CONCURRENCY="1", SOLD_OUT_CACHE_SECONDS="30").wait_ready()
    assert server.buy(user_id="holder").status_code == 201
    assert server.buy(user_id="early").json()["code"] == "sold_out"
    time.sleep(1.1)  # the hold's payment window passes, unpaid
    assert server.buy(user_id="late").status_code == 201


# Bad input, other buyers, verified mode, and the database down.

@pytest.mark.parametrize("path, body, status, code", [
    ("/purchases/999/cancel", {"user_id": "alice"}, 404, "purchase_not_found"),
    ("/purchases/1/cancel", {"user_id": "bob"}, 404, "purchase_not_found"),  # another buyer's
    ("/purchases/abc/cancel", {"user_id": "alice"}, 404, "not_found"),
    ("/purchases/-1/cancel", {"user_id": "alice"}, 404, "not_found"),
    (f"/purchases/{2**63}/cancel", {"user_id": "alice"}, 404, "purchase_not_found"),
    ("/purchases/1/cancel", {"user_id": "alice", "card": "4111"}, 422, "invalid_request"),
    ("/purchases/1/cancel", {}, 422, "invalid_request"),  # open mode: who is asking?
    ("/purchases/1/cancel", {"user_id": 7}, 422, "invalid_request"),
    ("/purchases/1/cancel", [], 400, "invalid_json"),
    ("/purchases/1/confirm", {"user_id": "alice"}, 410, "confirm_gone"),  # the provider confirms
    ("/purchases/999/confirm", {}, 410, "confirm_gone"),
])
def test_bad_cancels_and_any_confirm_are_problems(client, held_sale, conn, path, body, status, code):
    assert buy(client).get_json()["purchase_id"] == 1
    assert_problem(client.post(path, json=body), status, code)
    assert state(conn, 1)["status"] == "held" and item(conn)["remaining"] == 9


def test_a_cancel_needs_json_and_a_good_idempotency_key(client, held_sale):
    buy(client)
    assert_problem(client.post("/purchases/1/cancel", data="user_id=alice",
                               content_type="application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    assert_problem(client.post("/purchases/1/cancel", data="{", content_type="application/json"),
                   400, "invalid_json")
    assert_problem(client.post("/purchases/1/cancel", json={"user_id": "alice"}, headers={"Idempotency-Key": "é"}),
                   422, "invalid_request")
    assert_problem(client.get("/purchases/1/cancel"), 405, "method_not_allowed")
    gone = assert_problem(client.post("/purchases/1/confirm", data="{", content_type="application/json"),
                          410, "confirm_gone")
    assert "payment provider" in gone["detail"]


def test_verified_buyers_cancel_their_own_holds_only_and_confirm_none(verified_client, reset, conn):
    reset(stock=10, hold_seconds=HOLD_SECONDS)
    alice, bob = bearer(mint("alice")), bearer(mint("bob"))
    purchase_id = verified_client.post("/buy_ticket", json={"item_id": 1}, headers=alice).get_json()["purchase_id"]
    assert_problem(verified_client.post(f"/purchases/{purchase_id}/cancel"), 401, "unauthorized")
    assert_problem(verified_client.post(f"/purchases/{purchase_id}/cancel", headers=bob), 404, "purchase_not_found")
    assert_problem(verified_client.post(f"/purchases/{purchase_id}/cancel", headers=bob,
                                        json={"user_id": "alice"}), 403, "user_mismatch")
    assert_problem(verified_client.post(f"/purchases/{purchase_id}/confirm", headers=alice), 410, "confirm_gone")
    assert verified_client.get(f"/purchases/{purchase_id}", headers=alice).get_json()["status"] == "held"
    assert pay(purchase_id) == "confirmed"
    assert verified_client.get(f"/purchases/{purchase_id}", headers=alice).get_json()["status"] == "confirmed"
    set_expiry(conn, verified_client.post("/buy_ticket", json={"item_id": 1}, headers=bob).get_json()["purchase_id"], -1)
    listed = verified_client.get("/purchases", headers=bob).get_json()["purchases"]
    assert [purchase["status"] for purchase in listed] == ["expired"]


def test_a_payment_while_the_database_is_frozen_is_503_and_stripes_retry_applies_it_once(
        stoppable_database, start_server, reset, conn):
    reset(stock=5, hold_seconds=HOLD_SECONDS, price=PRICE, currency="EUR")
    server = start_server(WEB_CONCURRENCY="1", DB_RETRY_BUDGET_SECONDS="1", STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    purchase_id = server.buy(user_id="alice").json()["purchase_id"]
    conn.close()
    paid = stripe.intent_succeeded(purchase_id, PRICE, "eur")
    with frozen_database():
        refused = stripe.deliver(server.url, paid, SECRET)
    assert_http_problem(refused, 503, "overloaded")
    assert refused.headers["Retry-After"] == "1"

    def retried():
        answer = stripe.deliver(server.url, paid, SECRET)
        return answer if answer.status_code != 503 else None

    answer = wait_for(retried, seconds=30, pause=0.5)
    assert answer is not None and answer.status_code == 200 and answer.json()["outcome"] == "confirmed"
    assert stripe.deliver(server.url, paid, SECRET).json()["outcome"] == "duplicate"
    with db.connect() as fresh:
        assert state(fresh, purchase_id)["status"] == "confirmed"


def test_a_stale_choice_of_purchase_statement_costs_a_statement_never_a_wrong_sale(reset, conn):
    """db.py sends an item's purchases to buy_ticket.sql (sold at once), buy_held_ticket.sql (a
    payment window, nothing due) or buy_ticket_expiring_holds.sql by what the item's last purchase
    found. Here item 1 changes kind between sales under the same process, and holds fall due:
    each purchase is still decided by the locked row and the holds as they are."""
    reset(stock=10)
    assert db.buy_ticket(1, "alice", 1)["expires_at"] is None
    assert 1 not in db._statements
    reset(stock=10, hold_seconds=HOLD_SECONDS)  # buy_ticket.sql answers 'payment_window' here
    holds = [db.buy_ticket(1, "bob", 2), db.buy_ticket(1, "carol", 1)]
    assert db._statements[1] == "buy_held_ticket"
    assert [state(conn, hold["purchase_id"])["status"] for hold in holds] == ["held", "held"]
    for hold in holds:
        set_expiry(conn, hold["purchase_id"], -1)  # buy_held_ticket.sql answers 'holds_due' now
    sold = db.buy_ticket(1, "dave", 1)
    assert (sold["outcome"], sold["expired"], sold["released"], sold["remaining"]) == ("sold", 2, 3, 9)
    assert db._statements[1] == "buy_ticket_expiring_holds"
    assert db.buy_ticket(1, "erin", 1)["expired"] == 0 and db._statements[1] == "buy_held_ticket"
    reset(stock=10)  # buy_held_ticket.sql decides a purchase sold at once just as well
    sold = db.buy_ticket(1, "frank", 3)
    assert (sold["outcome"], sold["remaining"], sold["expires_at"]) == ("sold", 7, None)
    assert 1 not in db._statements and state(conn, sold["purchase_id"])["status"] == "confirmed"
    assert db.buy_ticket(1, "grace", 1)["remaining"] == 6
