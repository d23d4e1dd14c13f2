"""Fire a concurrent burst of purchases at the running service and prove that it sold exactly the stock.

The verdict comes from two sides: the HTTP answers the buyers got, and the rows in the database.

With --hold-seconds N the sale takes payment: each purchase holds its units for N seconds, a
--confirm-ratio of the buyers pay, the others let their hold expire; once every unpaid hold has
expired, a second wave of buyers buys the units that came back, and pays (and so on, while units
come back: with --pay-within past N some pay too late). A buyer pays as Stripe tells the shop: a
signed checkout.session.completed (STRIPE_WEBHOOK_SECRET, as the service reads it) delivered
twice, at once, a moment later, or out of order with a failure event. The proof then shows exactly
the stock confirmed, no hold left past its expiry, no unit lost or returned twice, the payments
confirmed times the price equal to the revenue, the late payments equal to the refunds owed, and
no payment applied twice.
"""
import argparse
import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import jwt
import psycopg
import requests

import db
import reset_db
from deploy.local_server import wait_until_ready
from flashsale import payments
from flashsale import settings as configuration
from verify import QUERIES, history
from verify import stripe_events as stripe

ITEM_ID = 1
REFUSAL_CODES = {"sold_out", "limit_reached"}
TOKEN_LIFETIME_SECONDS = 3600  # each buyer's token outlives the burst
RETRY_ATTEMPTS = 8  # per logical purchase, with --retry
RETRY_PAUSE_CAP_SECONDS = 5.0  # the most a Retry-After is honoured for
BACKOFF_FIRST_SECONDS = 0.1  # without Retry-After: 0.1, 0.2, 0.4, ... up to the cap below
BACKOFF_CAP_SECONDS = 2.0
# With --retry, sent again with the same key: 503 (nothing sold), and 502 and 504 from a proxy
# such as nginx, which lost the app host before its answer (the purchase may be done; the key
# makes the retry find it).
RETRIED_STATUSES = {502, 503, 504}
NEXT_WAVE_DEMAND = 2  # buyers of a later wave per unit that came back
MAX_WAVES = 10
EXPIRY_MARGIN_SECONDS = 0.5  # waited past a wave's last hold expiry before the next wave
PAYING_THREADS = 256  # buyers waiting to pay at once, in the proof's own process
PRICE, CURRENCY = 1250, "EUR"  # a held sale's price: what each unit owes, in minor units
# How a payer's event is delivered twice, as Stripe may: both at once, the second a moment later,
# or with a failure event of the same payment before or between them.
DELIVERIES = ("at_once", "later", "failure_first", "failure_between")
REDELIVERY_PAUSE_SECONDS = 0.3  # at most, for "later"
# Of the buyers who do not pay in time, the share who pay anyway, a moment after their hold
# expired (LATE_SECONDS after it at most): paid, but the units went back on sale. Owed back.
LATE_PAYER_RATIO = 0.2
LATE_SECONDS = (0.2, 1.0)
# What a delivery answered that says the purchase is paid for by it (or by its first delivery).
PAID_OUTCOMES = {"confirmed"}


@dataclass
class Purchase:
    """One buyer's purchase: every attempt of it (history.Operation) and, on a held sale, the
    deliveries of its payment event (`payments`, operations of kind "pay") and of a failure event
    (`failures`) when the buyer pays."""
    user_id: str
    key: str | None
    token: str | None = None  # a bearer token for user_id, when the service verifies tokens
    pays: bool = False  # on a held sale: pays for its hold (after `pay_after` s), else lets it expire
    pay_after: float = 0.0
    delivery: str = DELIVERIES[0]
    buy: history.Operation = None
    payments: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def __post_init__(self):
        self.buy = self.buy or history.Operation("buy", ITEM_ID, self.user_id, self.key)

    @property
    def answers(self):
        """(status or None, code) of each attempt; a 201 is "created"."""
        return [(attempt.status, answer_code(attempt)) for attempt in self.buy.attempts]

    @property
    def latencies(self):
        return [attempt.complete - attempt.invoke for attempt in self.buy.attempts]

    @property
    def answered_at(self):
        """time.monotonic() of each attempt's answer."""
        return [attempt.complete for attempt in self.buy.attempts]

    @property
    def purchase_ids(self):
        return [attempt.body["purchase_id"] for attempt in self.buy.attempts if attempt.status == 201]

    @property
    def final(self):
        return self.answers[-1]

    @property
    def acknowledged(self):
        return any(attempt.status == 201 for attempt in self.buy.attempts)

    @property
    def outcome(self):
        """What the payment did, as its deliveries answered (a redelivery names the first outcome);
        None without a definite answer."""
        return next((outcome_of(op.answer) for op in self.payments if op.answer is not None), None)

    @property
    def confirmed(self):
        return self.outcome in PAID_OUTCOMES


# Set in each burst process by start_process().
session = None
options = None


def start_process(parsed_options):
    global session, options
    session, options = requests.Session(), parsed_options


_paying = threading.local()  # a requests.Session per paying thread

# The burst's processes are forked from a server process of their own (forkserver), not from this
# one: had this process forked them while one of its threads was starting a program (chaos.py's
# faults), they would hold that program's pipes open, and the thread would wait until the burst
# was over.
BURST_PROCESSES = multiprocessing.get_context("forkserver")
BURST_PROCESSES.set_forkserver_preload(["verify.proof"])


def answer_code(attempt):
    if attempt.status is None:
        return (attempt.body or {}).get("error", "no answer")
    if attempt.status in (200, 201):
        return "created" if attempt.status == 201 else attempt.body.get("status", "ok")
    return (attempt.body or {}).get("code") or "not_json"


def retry_pause(response, attempt):
    """Seconds to wait before the next attempt: Retry-After when given, else exponential backoff."""
    try:
        return min(float(response.headers["Retry-After"]), RETRY_PAUSE_CAP_SECONDS)
    except (AttributeError, KeyError, ValueError):
        return min(BACKOFF_FIRST_SECONDS * 2**attempt, BACKOFF_CAP_SECONDS)


def perform(session, options, operation, path, body, headers):
    """POST `body` to `path` as one operation's attempts, recorded for the history check: with
    --retry, again with the same headers (its Idempotency-Key) after a 502, 503, 504 or
    transport error."""
    for number in range(options.attempts):
        response = history.record(operation, lambda: session.post(f"{options.url}{path}", json=body,
                                                                  headers=headers, timeout=options.timeout))
        status = operation.attempts[-1].status
        if status is not None and status not in RETRIED_STATUSES:
            return
        if number + 1 < options.attempts:
            time.sleep(retry_pause(response, number))


def bearer(purchase):
    return {"Authorization": f"Bearer {purchase.token}"} if purchase.token else {}


def buy(purchase):
    """Send one logical purchase, with --retry until it has a definite answer (in a burst process)."""
    key = {"Idempotency-Key": purchase.key} if purchase.key else {}
    perform(session, options, purchase.buy, "/buy_ticket",
            {"item_id": ITEM_ID, "user_id": purchase.user_id, "quantity": 1}, {**bearer(purchase), **key})
    return purchase


def outcome_of(attempt):
    """A webhook answer's outcome; a redelivery's is the outcome its event had the first time."""
    body = attempt.body or {}
    return body.get("first_outcome") or body.get("outcome")


def deliver(options, purchase, event, operations):
    """Deliver a signed event as Stripe does: again after a 5xx or no answer (Stripe retries for
    days; here up to the purchase's attempts), each attempt signed anew. Recorded as an operation
    of kind "pay" for the history check."""
    if not hasattr(_paying, "session"):
        _paying.session = requests.Session()
    operation = history.Operation("pay", ITEM_ID, purchase.user_id, event["id"], purchase_id=purchase.purchase_ids[0])
    operations.append(operation)
    for number in range(options.attempts):
        response = history.record(operation, lambda: stripe.deliver(options.url, event, options.webhook_secret,
                                                                    _paying.session, timeout=options.timeout))
        status = operation.attempts[-1].status
        if status is not None and status not in RETRIED_STATUSES:
            return
        if number + 1 < options.attempts:
            time.sleep(retry_pause(response, number))


def pay(options, purchase):
    """Pay for the purchase's hold `pay_after` seconds after it was made: its Checkout Session
    completes, and Stripe delivers the event twice, as `purchase.delivery` says (in a paying
    thread; "at_once" delivers the second copy from one more)."""
    time.sleep(max(0.0, purchase.buy.attempts[-1].complete + purchase.pay_after - time.monotonic()))
    purchase_id = purchase.purchase_ids[0]
    paid = stripe.checkout_completed(purchase_id, PRICE, CURRENCY)
    failed = stripe.async_payment_failed(purchase_id, PRICE, CURRENCY)
    if purchase.delivery == "at_once":
        twin = threading.Thread(target=deliver, args=(options, purchase, paid, purchase.payments))
        twin.start()
        deliver(options, purchase, paid, purchase.payments)
        twin.join()
        return purchase
    if purchase.delivery == "failure_first":
        deliver(options, purchase, failed, purchase.failures)
    deliver(options, purchase, paid, purchase.payments)
    if purchase.delivery == "failure_between":
        deliver(options, purchase, failed, purchase.failures)
    time.sleep(random.uniform(0, REDELIVERY_PAUSE_SECONDS))
    deliver(options, purchase, paid, purchase.payments)
    return purchase


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run_burst(options, purchases):
    """Send every purchase from `options.processes` processes; print progress; return them
    answered. On a held sale the buyers who pay confirm from threads of this process, so that a
    buyer waiting to pay holds up no purchase."""
    done, paying = [], []
    step = max(1, len(purchases) // 10)
    with (BURST_PROCESSES.Pool(options.processes, start_process, (options,)) as pool,
          ThreadPoolExecutor(PAYING_THREADS) as payments):
        for purchase in pool.imap_unordered(buy, purchases):
            if purchase.pays and purchase.acknowledged:
                paying.append(payments.submit(pay, options, purchase))
            else:
                done.append(purchase)
            if (len(done) + len(paying)) % step == 0 or len(done) + len(paying) == len(purchases):
                print(f"  {len(done) + len(paying)}/{len(purchases)} answered", flush=True)
        done += [future.result() for future in paying]
    return done


SWEEP_WAIT_SECONDS = 15  # after a held sale, for the workers' sweepers to expire what is due


def settled_database_state(options):
    """On a held sale, once the service itself (a purchase or a worker's sweeper) has expired
    every hold past its expiry, or after SWEEP_WAIT_SECONDS: the item, its rows, and
    time.monotonic() just before they were read (the history check's `swept_at`)."""
    deadline = time.monotonic() + SWEEP_WAIT_SECONDS
    while True:
        read_at = time.monotonic()
        item, rows = database_state(options.database_url)
        now = datetime.now(timezone.utc)
        if not any(row["status"] == "held" and row["expires_at"] <= now for row in rows) or read_at > deadline:
            return item, rows, read_at
        time.sleep(0.2)


def check_history(options, purchases, item, rows, swept_at=None):
    """history.py's Report on every answer of the run against the rows: one serial order."""
    operations = [p.buy for p in purchases] + [op for p in purchases for op in p.payments]
    return history.check(operations, [item], rows, options.wall_minus_monotonic, options.cache_seconds,
                         swept_at=swept_at)


def history_failures(report):
    return [] if report.ok else [f"the history fits no serial order:\n{report.text()}"]


@dataclass
class Money:
    """A held sale's payments as the database keeps them, beside what the deliveries answered."""
    paid: int  # payments that confirmed a hold
    revenue: int  # minor units: the item's revenue
    late: int  # payers told `late`: paid after the hold ended
    refunds_owed: int  # payments owed back
    applied_twice: int  # purchases with more than one payment from one buyer's one payment event

    def line(self):
        return (f"units confirmed = stock, payments confirmed {self.paid} x {payments.display(PRICE, CURRENCY)} "
                f"= revenue {payments.display(self.revenue, CURRENCY)}, late payments {self.late} = refunds owed "
                f"{self.refunds_owed}, {self.applied_twice} applied twice")


@dataclass
class Judgement:
    """What the database and the history say of a run: the item, its rows, the history check's
    Report, and every violated check (none: the run proves strict consistency)."""
    item: dict
    rows: list
    history: history.Report
    failures: list
    money: Money | None = None  # a held sale's


def judge(options, purchases, database_url=None):
    """The one verdict of a run, for the proof and every chaos run: the database read once the
    sale has settled (from `database_url`, else options.database_url), the checks of a sale sold
    at once or held for payment, and the history check of every answer."""
    money = None
    if options.hold_seconds:
        item, rows, swept_at = settled_database_state(options)
        failures = hold_verdict(options, purchases, item, rows)
        money, owed = money_failures(purchases, item, rows, payment_events(options.database_url))
        failures += owed
    else:
        item, rows = database_state(database_url or options.database_url)
        swept_at, failures = None, verdict(options, purchases, item, rows)
    report = check_history(options, purchases, item, rows, swept_at)
    return Judgement(item, rows, report, failures + history_failures(report), money)


def database_state(database_url):
    """The item (its units remaining, held and sold) and its purchase rows, every column."""
    with db.connect(database_url) as conn:
        item = conn.execute(db.query("get_item"), {"item_id": ITEM_ID}).fetchone()
        rows = conn.execute(db.query("list_purchase_states", QUERIES), {"item_id": ITEM_ID}).fetchall()
    return item, rows


def units_paid_for(database_url, seconds=60):
    """The item's units sold (confirmed), read again while the database is away (a chaos run)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return database_state(database_url)[0]["sold"]
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def acknowledgement_failures(purchases, rows, check_keys):
    """What the answers and the rows disagree on: every 201 one row, every row a 201."""
    failures = []
    acknowledged = [p for p in purchases if p.acknowledged]
    row_ids = Counter(row["id"] for row in rows)
    answered_ids = Counter(p.purchase_ids[0] for p in acknowledged)
    if any(count > 1 for count in answered_ids.values()):
        failures.append("one purchase id was acknowledged to two buyers")
    missing = set(answered_ids) - set(row_ids)
    if missing:
        failures.append(f"acknowledged purchases missing from the database: {sorted(missing)[:10]}")
    unacknowledged = set(row_ids) - set(answered_ids)
    if unacknowledged:
        failures.append(f"rows sold without a 201 reaching the buyer: {sorted(unacknowledged)[:10]}")
    if any(len(set(p.purchase_ids)) > 1 for p in purchases):
        failures.append("a retried purchase was sold twice")
    if check_keys:
        keys = Counter(row["idempotency_key"] for row in rows)
        ours = {p.key for p in purchases}
        if any(count > 1 for count in keys.values()):
            failures.append("an idempotency key has more than one row")
        if set(keys) - ours:
            failures.append("rows exist without a logical purchase behind them")
    finals = Counter(p.final for p in purchases if not p.acknowledged)
    wrong = {answer: count for answer, count in finals.items()
             if answer[0] != 409 or answer[1] not in REFUSAL_CODES}
    if wrong:
        failures.append(f"answers other than 201 or 409 sold_out/limit_reached: {wrong}")
    if any(answer[0] == 500 for p in purchases for answer in p.answers):
        failures.append("the server answered 500")
    return failures


def verdict(options, purchases, item, rows):
    """The list of violated checks; empty when the run proves strict consistency."""
    failures = []
    users = options.users or options.requests
    expected = min(options.stock, options.requests, users * options.max_per_user)
    acknowledged = [p for p in purchases if p.acknowledged]
    units = sum(row["quantity"] for row in rows)

    if not len(acknowledged) == len(rows) == units == item["sold"] == expected:
        failures.append(f"expected {expected} sold, got {len(acknowledged)} acknowledged purchases, "
                        f"{len(rows)} rows, {units} units in rows, {item['sold']} sold on the item")
    if item["sold"] + item["remaining"] != item["stock"]:
        failures.append(f"sold {item['sold']} + remaining {item['remaining']} != stock {item['stock']}")
    if expected == options.stock and item["remaining"] != 0:
        failures.append(f"demand exceeded supply but {item['remaining']} units remain")
    over = over_the_limit(rows, options.max_per_user, ("confirmed",))
    if over:
        failures.append(f"users over the limit of {options.max_per_user}: {over}")
    failures += acknowledgement_failures(purchases, rows, options.retry)
    errors = Counter(answer for p in purchases for answer in p.answers if answer[0] is None or answer[0] >= 500)
    if errors and not options.retry:
        failures.append(f"server errors or transport errors: {dict(errors)}")
    return failures


def over_the_limit(rows, limit, states):
    per_user = Counter()
    for row in rows:
        if row["status"] in states:
            per_user[row["user_id"]] += row["quantity"]
    return {user: total for user, total in per_user.items() if total > limit}


def hold_verdict(options, purchases, item, rows):
    """The violated checks of a held sale: exactly the stock confirmed, no hold left held past
    its expiry, stock − remaining exactly the units of rows confirmed or held, and every
    confirmation's answer the row's final state."""
    failures = acknowledgement_failures(purchases, rows, check_keys=True)
    now = datetime.now(timezone.utc)
    confirmed = sum(row["quantity"] for row in rows if row["status"] == "confirmed")
    if not confirmed == item["sold"] == options.stock:
        failures.append(f"expected exactly the stock {options.stock} confirmed, got {confirmed} units in "
                        f"confirmed rows, {item['sold']} sold on the item")
    stale = [row for row in rows if row["status"] == "held" and row["expires_at"] <= now]
    if stale:
        failures.append(f"holds still held past their expiry: {[row['id'] for row in stale][:10]}")
    taken = sum(row["quantity"] for row in rows if row["status"] in ("held", "confirmed") and row not in stale)
    if item["stock"] - item["remaining"] != taken:
        failures.append(f"units lost or doubled: stock {item['stock']} - remaining {item['remaining']} != "
                        f"{taken} units confirmed or held")
    by_id = {row["id"]: row for row in rows}
    for p in purchases:
        if not p.acknowledged:
            continue
        final = by_id.get(p.purchase_ids[0], {}).get("status")
        if p.confirmed != (final == "confirmed"):
            failures.append(f"purchase {p.purchase_ids[0]}: its payment answered {p.outcome}, the row is {final}")
            break
        if not p.pays and final != "expired":
            failures.append(f"purchase {p.purchase_ids[0]} was never paid for, but its row is {final}")
            break
    over = over_the_limit(rows, options.max_per_user, ("held", "confirmed"))
    if over:
        failures.append(f"users over the limit of {options.max_per_user}: {over}")
    return failures


def payment_events(database_url):
    with db.connect(database_url) as conn:
        return [row for row in conn.execute(db.query("list_payment_events", QUERIES)).fetchall()
                if row["item_id"] == ITEM_ID]


def money_failures(purchases, item, rows, events):
    """(Money, the violated checks): each confirmed hold paid once at the price, the revenue their
    sum, every late payment owed back, every failure event ignored, no payment applied twice."""
    failures = []
    money_rows = [event for event in events if event["payment_status"] is not None]
    per_purchase = Counter(event["purchase_id"] for event in money_rows)
    paid = [event for event in money_rows if event["payment_status"] == "paid"]
    money = Money(paid=len(paid), revenue=item["revenue"], late=sum(p.outcome == "late" for p in purchases),
                  refunds_owed=item["refunds_owed"], applied_twice=sum(count > 1 for count in per_purchase.values()))
    confirmed_rows = sum(row["status"] == "confirmed" for row in rows)
    if money.paid != confirmed_rows or money.revenue != money.paid * PRICE:
        failures.append(f"{money.paid} payments confirmed holds, {confirmed_rows} rows are confirmed, revenue "
                        f"{money.revenue} != {money.paid} x {PRICE}")
    if {event["amount"] for event in paid} - {PRICE}:
        failures.append("a hold was confirmed by a payment of another amount")
    if money.late != money.refunds_owed:
        failures.append(f"{money.late} payers were told their payment came late, {money.refunds_owed} refunds owed")
    if money.applied_twice:
        failures.append(f"{money.applied_twice} purchases hold two payments from one payment event")
    told = Counter(outcome_of(op.answer) for p in purchases for op in p.failures if op.answer is not None)
    if set(told) - {"ignored"}:
        failures.append(f"failure events did something: {dict(told)}")
    return money, failures


def print_report(options, purchases, seconds, item, rows):
    answers = Counter(answer for p in purchases for answer in p.answers)
    delivered = Counter((attempt.body or {}).get("outcome") if attempt.status == 200 else answer_code(attempt)
                        for p in purchases for op in p.payments + p.failures for attempt in op.attempts)
    latencies = [latency for p in purchases for latency in p.latencies]
    print("Answers (every attempt):")
    for (status, code), count in sorted(answers.items(), key=lambda entry: (entry[0][0] or 0, entry[0][1])):
        print(f"  {status or 'error':>5} {code:<24} {count}")
    for code, count in sorted(delivered.items()):
        print(f"  webhook {code:<22} {count}")
    print(f"Throughput: {sum(answers.values()) / seconds:.1f} requests/s ({seconds:.2f} s)")
    print("Latency ms: " + "  ".join(
        f"{name} {percentile(latencies, fraction) * 1000:.1f}"
        for name, fraction in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)]))
    states = Counter(row["status"] for row in rows)
    print(f"Database: stock {item['stock']}, sold {item['sold']}, held {item['held']}, remaining "
          f"{item['remaining']}, {len(rows)} purchase rows"
          + (f" ({', '.join(f'{count} {state}' for state, count in sorted(states.items()))})"
             if options.hold_seconds else ""))


def defaults(environ):
    """The options' defaults. What the service reads too (API_URL, DATABASE_URL, the sold-out
    cache, the token settings) comes from the environment and .env under the service's names,
    with the original project's TOTAL_REQUESTS and CONCURRENT_PROCESSES; raises ConfigError."""
    auth = configuration.auth_settings(environ)
    return {
        "url": configuration.base_url(environ.get("API_URL") or "http://127.0.0.1:8000"),
        "database_url": environ.get("DATABASE_URL"),
        "requests": configuration.number(environ, "TOTAL_REQUESTS", 1000, int, 1),
        "processes": configuration.number(environ, "CONCURRENT_PROCESSES", 50, int, 1),
        "stock": 100, "max_per_user": None, "users": None, "timeout": 10.0, "retry": False,
        "hold_seconds": None, "confirm_ratio": 0.5, "pay_within": 0.0, "wait": 30.0,
        "token_secret": auth["auth_jwt_secret"],
        # The service's first signing secret: the proof signs as Stripe does with it.
        "webhook_secret": next(iter(configuration.webhook_secrets(environ)), None),
        # The service's own, which the history check allows for (the service reads the same).
        "cache_seconds": configuration.number(environ, "SOLD_OUT_CACHE_SECONDS", 0.5, float, 0.0),
        "auth": auth,
    }


def complete(options):
    """The options with what follows from them: the retries, the buyers' tokens' algorithm and
    claims (what the service checks: its audience and issuer, its first HMAC algorithm)."""
    options.max_per_user = options.max_per_user or options.stock
    options.wall_minus_monotonic = history.wall_minus_monotonic()  # this machine's: the database's too
    options.retry = options.retry or options.hold_seconds is not None
    options.attempts = RETRY_ATTEMPTS if options.retry else 1
    hmac_algorithms = [name for name in options.auth["auth_jwt_algorithms"] if name.startswith("HS")]
    options.token_algorithm = hmac_algorithms[0] if hmac_algorithms else "HS256"
    options.token_claims = {name: value for name, value in [("aud", options.auth["auth_jwt_audience"]),
                                                            ("iss", options.auth["auth_jwt_issuer"])] if value}
    return options


def make_options(**given):
    """The proof's options for a caller in Python (the chaos runs): the command line's defaults
    with `given` over them."""
    return complete(argparse.Namespace(**{**defaults(configuration.environment()), **given}))


def parse_options(argv):
    """The proof's command line. A bad default from the environment is refused in one line, as a
    bad option is."""
    parser = argparse.ArgumentParser(prog="proof_of_correctness.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        parser.set_defaults(**defaults(configuration.environment()))
    except configuration.ConfigError as exc:
        parser.error(f"invalid configuration: {exc}")
    parser.add_argument("--url", help="API_URL: the service, http://host:port")
    parser.add_argument("--database-url", help="DATABASE_URL")
    parser.add_argument("--requests", type=int, help="TOTAL_REQUESTS: purchases to send (default 1000)")
    parser.add_argument("--processes", type=int, help="CONCURRENT_PROCESSES: processes sending them (default 50)")
    parser.add_argument("--stock", type=int, help="units on sale (default 100)")
    parser.add_argument("--max-per-user", type=int, help="units one user may buy (default: the stock)")
    parser.add_argument("--users", type=int, help="distinct users, repeating (default: one per request)")
    parser.add_argument("--timeout", type=float, help="seconds per HTTP request")
    parser.add_argument("--retry", action="store_true",
                        help="give each purchase an Idempotency-Key and retry 502s, 503s, 504s and "
                             "transport errors (always on with --hold-seconds)")
    parser.add_argument("--hold-seconds", type=int,
                        help="a sale that takes payment: each purchase holds its units this long")
    parser.add_argument("--confirm-ratio", type=float,
                        help="with --hold-seconds: the share of first-wave buyers who pay (default 0.5)")
    parser.add_argument("--pay-within", type=float,
                        help="with --hold-seconds: a buyer pays at a random moment this many seconds "
                             "after its hold at most (default 0: at once); past --hold-seconds some "
                             "pay too late")
    parser.add_argument("--webhook-secret",
                        help="STRIPE_WEBHOOK_SECRET (its first): sign the payment events with it, as Stripe "
                             "does (needed with --hold-seconds)")
    parser.add_argument("--wait", type=float, help="seconds to wait for /readyz")
    parser.add_argument("--token-secret",
                        help="AUTH_JWT_SECRET: sign one bearer token per buyer with it (default: none, "
                             "for a service in open mode)")
    options = parser.parse_args(argv)
    if not options.database_url:
        parser.error("DATABASE_URL is not set (environment, .env or --database-url)")
    try:
        options.url = configuration.base_url(options.url)
    except configuration.ConfigError as exc:
        parser.error(str(exc).replace("API_URL", "--url"))
    if options.hold_seconds is not None and options.hold_seconds < 1:
        parser.error("--hold-seconds must be at least 1")
    if not 0 <= options.confirm_ratio <= 1:
        parser.error("--confirm-ratio must be from 0 to 1")
    if options.hold_seconds is not None and not options.webhook_secret:
        parser.error("STRIPE_WEBHOOK_SECRET (or --webhook-secret) is not set: a held sale is paid by signed "
                     "webhooks, as the service takes them")
    if not options.pay_within >= 0:
        parser.error("--pay-within must be at least 0")
    return complete(options)


def mint_token(options, user_id):
    """The bearer token the shop's identity provider would give this buyer."""
    claims = {"sub": user_id, "exp": int(time.time()) + TOKEN_LIFETIME_SECONDS, **options.token_claims}
    return jwt.encode(claims, options.token_secret, algorithm=options.token_algorithm)


def make_purchases(options, count=None, prefix="user", pay_ratio=None):
    """`count` purchases (TOTAL_REQUESTS), by --users buyers named prefix-N; on a held sale, a
    `pay_ratio` of them (--confirm-ratio) pay, chosen at random, and LATE_PAYER_RATIO of the
    others pay after their hold expired."""
    count = count or options.requests
    users = options.users or count
    pay_ratio = options.confirm_ratio if pay_ratio is None else pay_ratio
    chooser = random.Random(prefix)
    purchases = []
    for index in range(count):
        pays = options.hold_seconds is not None and chooser.random() < pay_ratio
        pay_after = chooser.uniform(0, options.pay_within)
        if options.hold_seconds is not None and not pays and chooser.random() < LATE_PAYER_RATIO:
            pays, pay_after = True, options.hold_seconds + chooser.uniform(*LATE_SECONDS)
        purchases.append(Purchase(user_id=f"{prefix}-{index % users}", key=str(uuid.uuid4()) if options.retry else None,
                                  pays=pays, pay_after=pay_after, delivery=chooser.choice(DELIVERIES)))
    if options.token_secret:
        for purchase in purchases:
            purchase.token = mint_token(options, purchase.user_id)
    return purchases


def held_sale(options):
    """Waves of buyers: the first of TOTAL_REQUESTS, a --confirm-ratio of whom pay; then, once
    a wave's unpaid holds have expired, another for the units that came back, every buyer of
    which pays; until the whole stock is paid for. Returns every purchase."""
    purchases, count, ratio = [], options.requests, options.confirm_ratio
    for wave in range(1, MAX_WAVES + 1):
        done = run_burst(options, make_purchases(options, count, f"wave{wave}", ratio))
        purchases += done
        expiries = [datetime.fromisoformat(attempt.body["expires_at"]) for p in done
                    for attempt in p.buy.attempts if attempt.status == 201]
        paid = sum(p.confirmed for p in done)
        now = datetime.now(timezone.utc)
        wait = max(0.0, (max(expiries, default=now) - now).total_seconds()) + EXPIRY_MARGIN_SECONDS
        print(f"Wave {wave}: {len(expiries)} holds, {paid} paid for"
              + (f"; waiting {wait:.1f} s for the unpaid ones to expire" if paid < len(expiries) else ""), flush=True)
        if paid < len(expiries):
            time.sleep(wait)
        returned = options.stock - units_paid_for(options.database_url)
        if returned == 0 or wave == MAX_WAVES:
            return purchases
        count, ratio = max(10, NEXT_WAVE_DEMAND * returned), 1.0
        print(f"Wave {wave + 1}: {count} buyers for the {returned} units back on sale, each paying", flush=True)


def sale_price(options):
    """A held sale is sold at PRICE in CURRENCY, which its payments must match; one sold at once has
    no price, as before."""
    return {"price": PRICE, "currency": CURRENCY} if options.hold_seconds else {}


def main(argv=None):
    options = parse_options(argv)
    try:
        reset_db.reset(stock=options.stock, max_per_user=options.max_per_user, hold_seconds=options.hold_seconds,
                       database_url=options.database_url, **sale_price(options))
    except psycopg.Error as exc:
        print(f"FAILURE: cannot reset the database: {exc}")
        return 1
    if not wait_until_ready(options.url, options.wait):
        print(f"FAILURE: the service at {options.url} was not ready within {options.wait:.0f} s")
        return 1
    held = f", each held {options.hold_seconds} s for payment" if options.hold_seconds else ""
    print(f"Burst: {options.requests} purchases from {options.processes} processes at {options.url}, "
          f"{options.stock} units on sale{held}, "
          + ("each buyer with its own bearer token" if options.token_secret else "no tokens (open mode)"))
    started = time.perf_counter()
    if options.hold_seconds:
        purchases = held_sale(options)
    else:
        purchases = run_burst(options, make_purchases(options))
    seconds = time.perf_counter() - started
    judgement = judge(options, purchases)
    item, failures = judgement.item, judgement.failures
    print_report(options, purchases, seconds, item, judgement.rows)
    print("\n".join(judgement.history.lines))
    if failures:
        print("FAILURE:\n" + "\n".join(f"  - {failure}" for failure in failures))
        return 1
    if options.hold_seconds:
        print(f"SUCCESS: Strict consistency maintained. Exactly {item['sold']} items confirmed, "
              f"0 held past expiry, 0 units lost or doubled; {judgement.money.line()}.")
    else:
        print(f"SUCCESS: Strict consistency maintained. Exactly {item['sold']} items sold.")
    return 0

