"""Fire a concurrent burst of purchases at the running service and prove that it sold exactly the stock.

The verdict comes from two sides: the HTTP answers the buyers got, and the rows in the database.
"""
import argparse
import multiprocessing
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
import jwt
import psycopg
import requests

import db
import reset_db
import settings as configuration
from local_server import wait_until_ready

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


@dataclass
class Purchase:
    """One logical purchase: every attempt's answer, latency, time answered and the purchase id it got."""
    user_id: str
    key: str | None
    token: str | None = None  # a bearer token for user_id, when the service verifies tokens
    answers: list = field(default_factory=list)  # (status or None, code), one per attempt
    latencies: list = field(default_factory=list)
    answered_at: list = field(default_factory=list)  # time.time(), one per attempt
    purchase_ids: list = field(default_factory=list)

    @property
    def final(self):
        return self.answers[-1]

    @property
    def acknowledged(self):
        return any(status == 201 for status, _ in self.answers)


# Set in each burst process by start_process().
session = None
options = None


def start_process(parsed_options):
    global session, options
    session, options = requests.Session(), parsed_options


def answer_code(response):
    try:
        return response.json().get("code", "") if response.status_code != 201 else "created"
    except ValueError:
        return "not_json"


def retry_pause(response, attempt):
    """Seconds to wait before the next attempt: Retry-After when given, else exponential backoff."""
    try:
        return min(float(response.headers["Retry-After"]), RETRY_PAUSE_CAP_SECONDS)
    except (AttributeError, KeyError, ValueError):
        return min(BACKOFF_FIRST_SECONDS * 2**attempt, BACKOFF_CAP_SECONDS)


def buy(purchase):
    """Send one logical purchase; with --retry, repeat it with the same key after a 502, 503, 504
    or transport error."""
    headers = {"Idempotency-Key": purchase.key} if purchase.key else {}
    if purchase.token:
        headers["Authorization"] = f"Bearer {purchase.token}"
    body = {"item_id": ITEM_ID, "user_id": purchase.user_id, "quantity": 1}
    for attempt in range(options.attempts):
        started = time.perf_counter()
        response = None
        try:
            response = session.post(f"{options.url}/buy_ticket", json=body, headers=headers,
                                    timeout=options.timeout)
            purchase.answers.append((response.status_code, answer_code(response)))
            if response.status_code == 201:
                purchase.purchase_ids.append(response.json()["purchase_id"])
        except requests.RequestException as exc:
            purchase.answers.append((None, type(exc).__name__))
        purchase.latencies.append(time.perf_counter() - started)
        purchase.answered_at.append(time.time())
        status = purchase.final[0]
        if status is not None and status not in RETRIED_STATUSES:
            break
        if attempt + 1 < options.attempts:
            time.sleep(retry_pause(response, attempt))
    return purchase


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run_burst(options, purchases):
    """Send every purchase from `options.processes` processes; print progress; return them answered."""
    done = []
    step = max(1, len(purchases) // 10)
    with multiprocessing.Pool(options.processes, start_process, (options,)) as pool:
        for purchase in pool.imap_unordered(buy, purchases):
            done.append(purchase)
            if len(done) % step == 0 or len(done) == len(purchases):
                print(f"  {len(done)}/{len(purchases)} answered", flush=True)
    return done


def database_state(database_url):
    with db.connect(database_url) as conn:
        item = conn.execute(db.query("get_item"), {"item_id": ITEM_ID}).fetchone()
        rows = conn.execute(db.query("list_purchases", db.TEST_QUERIES), {"item_id": ITEM_ID}).fetchall()
    return item, rows


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
    per_user = Counter()
    for row in rows:
        per_user[row["user_id"]] += row["quantity"]
    over = {user: total for user, total in per_user.items() if total > options.max_per_user}
    if over:
        failures.append(f"users over the limit of {options.max_per_user}: {over}")

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
    if options.retry:
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
    errors = Counter(answer for p in purchases for answer in p.answers
                     if answer[0] is None or answer[0] >= 500)
    if errors and not options.retry:
        failures.append(f"server errors or transport errors: {dict(errors)}")
    if any(answer[0] == 500 for p in purchases for answer in p.answers):
        failures.append("the server answered 500")
    return failures


def print_report(options, purchases, seconds, item, rows):
    answers = Counter(answer for p in purchases for answer in p.answers)
    latencies = [latency for p in purchases for latency in p.latencies]
    print("Answers (every attempt):")
    for (status, code), count in sorted(answers.items(), key=lambda entry: (entry[0][0] or 0, entry[0][1])):
        print(f"  {status or 'error':>5} {code:<24} {count}")
    print(f"Throughput: {sum(answers.values()) / seconds:.1f} requests/s ({seconds:.2f} s)")
    print("Latency ms: " + "  ".join(
        f"{name} {percentile(latencies, fraction) * 1000:.1f}"
        for name, fraction in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)]))
    print(f"Database: stock {item['stock']}, sold {item['sold']}, remaining {item['remaining']}, "
          f"{len(rows)} purchase rows")


def parse_options(argv):
    """The proof's options. Their defaults come from the environment and .env, under the names
    the service uses; a bad one is refused in one line, as a bad option is."""
    parser = argparse.ArgumentParser(description=__doc__)
    environ = configuration.environment()
    try:
        url = configuration.base_url(environ.get("API_URL") or "http://127.0.0.1:8000")
        requests_default = configuration.number(environ, "TOTAL_REQUESTS", 1000, int, 1)
        processes_default = configuration.number(environ, "CONCURRENT_PROCESSES", 50, int, 1)
        auth = configuration.auth_settings(environ)
    except configuration.ConfigError as exc:
        parser.error(f"invalid configuration: {exc}")
    parser.add_argument("--url", default=url, help="API_URL: the service, http://host:port")
    parser.add_argument("--database-url", default=environ.get("DATABASE_URL"), help="DATABASE_URL")
    parser.add_argument("--requests", type=int, default=requests_default,
                        help="TOTAL_REQUESTS: purchases to send (default 1000)")
    parser.add_argument("--processes", type=int, default=processes_default,
                        help="CONCURRENT_PROCESSES: processes sending them (default 50)")
    parser.add_argument("--stock", type=int, default=100, help="units on sale (default 100)")
    parser.add_argument("--max-per-user", type=int, help="units one user may buy (default: the stock)")
    parser.add_argument("--users", type=int, help="distinct users, repeating (default: one per request)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    parser.add_argument("--retry", action="store_true",
                        help="give each purchase an Idempotency-Key and retry 502s, 503s, 504s and "
                             "transport errors")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for /readyz")
    parser.add_argument("--token-secret", default=auth["auth_jwt_secret"],
                        help="AUTH_JWT_SECRET: sign one bearer token per buyer with it (default: none, "
                             "for a service in open mode)")
    options = parser.parse_args(argv)
    if not options.database_url:
        parser.error("DATABASE_URL is not set (environment, .env or --database-url)")
    try:
        options.url = configuration.base_url(options.url)
    except configuration.ConfigError as exc:
        parser.error(str(exc).replace("API_URL", "--url"))
    options.max_per_user = options.max_per_user or options.stock
    options.attempts = RETRY_ATTEMPTS if options.retry else 1
    # The tokens carry what the service checks: its audience and issuer, its first HMAC algorithm.
    hmac_algorithms = [name for name in auth["auth_jwt_algorithms"] if name.startswith("HS")]
    options.token_algorithm = hmac_algorithms[0] if hmac_algorithms else "HS256"
    options.token_claims = {name: value for name, value in [("aud", auth["auth_jwt_audience"]),
                                                            ("iss", auth["auth_jwt_issuer"])] if value}
    return options


def mint_token(options, user_id):
    """The bearer token the shop's identity provider would give this buyer."""
    claims = {"sub": user_id, "exp": int(time.time()) + TOKEN_LIFETIME_SECONDS, **options.token_claims}
    return jwt.encode(claims, options.token_secret, algorithm=options.token_algorithm)


def make_purchases(options):
    users = options.users or options.requests
    purchases = [Purchase(user_id=f"user-{index % users}", key=str(uuid.uuid4()) if options.retry else None)
                 for index in range(options.requests)]
    if options.token_secret:
        for purchase in purchases:
            purchase.token = mint_token(options, purchase.user_id)
    return purchases


def main(argv=None):
    options = parse_options(argv)
    try:
        reset_db.reset(stock=options.stock, max_per_user=options.max_per_user,
                       database_url=options.database_url)
    except psycopg.Error as exc:
        print(f"FAILURE: cannot reset the database: {exc}")
        return 1
    if not wait_until_ready(options.url, options.wait):
        print(f"FAILURE: the service at {options.url} was not ready within {options.wait:.0f} s")
        return 1
    print(f"Burst: {options.requests} purchases from {options.processes} processes at {options.url}, "
          f"{options.stock} units on sale, "
          + ("each buyer with its own bearer token" if options.token_secret else "no tokens (open mode)"))
    started = time.perf_counter()
    purchases = run_burst(options, make_purchases(options))
    seconds = time.perf_counter() - started
    item, rows = database_state(options.database_url)
    print_report(options, purchases, seconds, item, rows)
    failures = verdict(options, purchases, item, rows)
    if failures:
        print("FAILURE:\n" + "\n".join(f"  - {failure}" for failure in failures))
        return 1
    print(f"SUCCESS: Strict consistency maintained. Exactly {item['sold']} items sold.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
