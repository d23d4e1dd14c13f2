"""Measure the service against the machine's own ceilings, in one run, and print the ratios.

1. Database ceiling: pgbench running the purchase transaction on one hot row.
2. HTTP ceilings: the same gunicorn configuration answering a constant 409, no database, through
   Flask and from a bare WSGI function.
3. The service: purchases/s, sold-out answers/s, and a burst of 10x demand.
4. Features on the request path: the same build with each feature on against off; the payment
   window only, unless --full.
5. With --full, scaling: 1 hot item against 16 items, and WEB_CONCURRENCY 1, 2, 3, 4, 8.
"""
import argparse
import collections
import itertools
import json
import random
import secrets
import subprocess
import sys
import threading
import time
import uuid
from functools import cache
from pathlib import Path

import jwt
import requests

import db
import reset_db
from deploy.local_server import LocalServer
from deploy.nginx import GunicornBehindNginx
from flashsale import settings as configuration
from verify import stripe_events

ROOT = Path(__file__).resolve().parent.parent

BENCH = ROOT / "bench"
PGBIN = Path(max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/bin")))
AMPLE_STOCK = 100_000_000
SETUP_SECONDS = 3  # a server's start, warm-up and reset around a measurement, for the estimate
FEATURE_SETUP_SECONDS = 13  # a feature's two servers started, stopped, and warmed twice each
LOAD_GAP_SECONDS = 0.3  # between two loads of warm servers
BURST_SECONDS = 10  # wrk's -d for the burst: far more than it needs


class Progress:
    """Prints which measurement runs now, and about how long the whole run has left."""

    def __init__(self, planned, seconds):
        self.planned, self.left, self.done = planned, seconds, 0

    def __call__(self, what, seconds, setup):
        self.done += 1
        left = round(self.left)
        print(f"[{self.done}/{self.planned}] {what}: {seconds} s; about {left // 60} min "
              f"{left % 60:02d} s left", flush=True)
        self.left = max(0, self.left - seconds - setup)


progress = None  # set by main()


def announce(what, seconds, setup=SETUP_SECONDS):
    if progress:
        progress(what, seconds, setup)


def fresh_host():
    """A loopback address of its own, 127.x.y.z, for each server.

    Sync workers close every connection, so the server keeps each one in TIME_WAIT for a
    minute; a later run that reused a (client port, server address) pair would see some of its
    SYNs refused and retried a second later."""
    return "127." + ".".join(str(random.randint(1, 254)) for _ in range(3))


def gunicorn(workers, app="app:app", **env):
    return LocalServer(app, host=fresh_host(), WEB_CONCURRENCY=str(workers), **env)


def configured(**env):
    """A server factory: gunicorn with these settings."""
    return lambda workers: gunicorn(workers, **env)


# Verified tokens: the same gunicorn in open mode against verified mode (HS256). The load is a
# crowd of BUYERS, each with one token for the whole sale, as an identity provider hands them
# out; each wrk thread sends them in turn from a random place, so a buyer comes back every
# BUYERS requests and a worker verifies each token once, then finds it in its cache. With
# BUYERS = 200_000 every request carries a token not seen before (docs/auth.md has both figures).
BUYERS = 1_000
TOKEN_LIFETIME_SECONDS = 3 * 3600
NO_AUTH = {"AUTH_JWT_SECRET": "", "AUTH_JWT_PUBLIC_KEY": "", "AUTH_JWT_ALGORITHMS": "",
           "AUTH_JWT_AUDIENCE": "", "AUTH_JWT_ISSUER": ""}


@cache
def token_file():
    """(secret, path): a fresh secret, and a file of "sub token" lines for buy.lua."""
    secret = secrets.token_hex(32)
    expires = int(time.time()) + TOKEN_LIFETIME_SECONDS
    path = BENCH / "results" / "tokens.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    lines = (f"{run}-{n} {jwt.encode({'sub': f'{run}-{n}', 'exp': expires}, secret, 'HS256')}\n"
             for n in range(BUYERS))
    path.write_text("".join(lines))
    return secret, path


def with_tokens(server):
    server.wrk_args = (str(token_file()[1]),)
    return server


# Both modes get the same requests, a token and the user id its sub names, so that the row
# measures the check and not the bytes of the header (docs/auth.md has what those cost).
def open_mode(workers):
    return with_tokens(gunicorn(workers, **NO_AUTH))


def verified_mode(workers):
    return with_tokens(gunicorn(workers, **{**NO_AUTH, "AUTH_JWT_SECRET": token_file()[0],
                                            "AUTH_JWT_ALGORITHMS": "HS256"}))


# A payment window: the same gunicorn, loaded on an item whose purchases are holds (item 2 of
# feature_cost's sale) against the immediate item 1. The holds outlast the run: nothing expires.
HELD_ITEM = 2
HOLD_SECONDS = 3600


def held_item(workers):
    server = gunicorn(workers)
    server.item_id = HELD_ITEM
    return server


# Stripe webhooks (docs/payments.md): the same gunicorn, loaded on item 1 while a thread of the
# benchmark delivers signed payment events for its purchases, WEBHOOK_EVENTS_PER_SECOND of them,
# each applied by apply_payment_event.sql under the purchase's row lock (a payment for a purchase
# sold at once: owed back, one INSERT and one UPDATE), never the item's.
WEBHOOK_SECRET = "whsec_bench"
WEBHOOK_EVENTS_PER_SECOND = 100


class PaidWhileLoaded:
    """A gunicorn taking webhooks, and while it is up, a steady stream of signed events."""

    def __init__(self, workers):
        self.server = gunicorn(workers, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.deliver, daemon=True)
        self.delivered = collections.Counter()

    def __enter__(self):
        self.server.__enter__()
        self.url = self.server.url
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()
        return self.server.__exit__(*exc)

    def deliver(self):
        session = requests.Session()
        for number in itertools.count(1):
            if self.stopped.wait(1 / WEBHOOK_EVENTS_PER_SECOND):
                return
            event = stripe_events.intent_succeeded(number % 1000 + 1, 100, "eur")
            try:
                answer = stripe_events.deliver(self.url, event, WEBHOOK_SECRET, session, timeout=10)
                self.delivered[answer.status_code] += 1
            except requests.RequestException as exc:
                self.delivered[type(exc).__name__] += 1


def behind_nginx(workers, app="app:app", **env):
    """The same gunicorn on a unix socket, with nginx in front on a loopback address of its own.
    nginx keeps wrk's connections open, which gunicorn's sync worker cannot."""
    return GunicornBehindNginx(app, host=fresh_host(), WEB_CONCURRENCY=str(workers), **env)


# Features on the request path, each measured as the same build with the feature off and on:
# name -> (off, on), each a function of the worker count that returns a server to measure
# (a context manager with `url`; its optional `wrk_args` are passed to buy.lua).
FEATURES = {
    # docs/deadline.md: off is plain psycopg connections, whose waits nothing bounds.
    "client deadline": (configured(DB_CLIENT_DEADLINE="0"), gunicorn),
    "verified tokens": (open_mode, verified_mode),
    "nginx": (gunicorn, behind_nginx),
    # docs/observe.md: metrics on against both off, then with the access log too.
    "metrics": (configured(METRICS="0", ACCESS_LOG="0"), configured(METRICS="1", ACCESS_LOG="0")),
    "metrics+access log": (configured(METRICS="0", ACCESS_LOG="0"), configured(METRICS="1", ACCESS_LOG="1")),
    # docs/holds.md: purchases held for payment against purchases sold at once.
    "payment window": (gunicorn, held_item),
    "stripe webhooks": (gunicorn, PaidWhileLoaded),
}
HEADLINE_FEATURES = ("payment window",)  # the feature rows measured without --full
FEATURE_TARGET = 0.95  # on/off, each column: a feature costs under 5%
FEATURE_TARGETS = {"payment window": 0.90}  # a hold costs under a tenth


def wrk(url, seconds, connections, items=1, limit=None, extra=(), first_item=1):
    """Run wrk with buy.lua; return its RESULT line as a dict.

    With a limit, one wrk thread sends the requests and stops at the last answer: a second
    thread would stop with connections opened and never written to, each pinning a sync
    worker until gunicorn's timeout, and the other thread's answers would wait for them."""
    threads = 1 if limit else 2
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
               "-s", str(BENCH / "buy.lua"), url, "--", str(items), uuid.uuid4().hex[:8],
               str(limit or ""), str(threads), str(first_item), *extra]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["per_second"] = result["requests"] / result["seconds"]
    return result


def database_ceiling(database_url, seconds, connections):
    announce("database ceiling (pgbench)", seconds)
    reset_db.reset(stock=AMPLE_STOCK, max_per_user=AMPLE_STOCK, database_url=database_url)
    command = [str(PGBIN / "pgbench"), "-n", "-M", "prepared", "-c", str(connections), "-j", "2",
               "-T", str(seconds), "-f", str(BENCH / "purchase.pgbench"), database_url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    tps = next(line for line in output.splitlines() if line.startswith("tps ="))
    latency = next(line for line in output.splitlines() if line.startswith("latency average"))
    return {"per_second": float(tps.split()[2]), "latency_average_ms": float(latency.split()[3])}


def warm_up(url, connections=50, extra=()):
    """A second of load, as a sale opens on a service that has been up; then a second for the
    requests wrk left queued to be served."""
    wrk(url, 1, connections, extra=extra)
    time.sleep(1)


def service_run(database_url, seconds, workers, stock, items=1, connections=50, limit=None, serve=None,
                what="the service"):
    """Serve `items` items with `stock` units each with `workers` warm workers, load them with wrk.
    `serve(workers)` makes the server; plain gunicorn by default."""
    announce(what, seconds)
    with (serve or gunicorn)(workers) as server:
        extra = getattr(server, "wrk_args", ())
        reset_db.reset(stock=AMPLE_STOCK, max_per_user=AMPLE_STOCK, database_url=database_url)
        warm_up(f"{server.url}/buy_ticket", connections, extra)
        reset_db.reset(stock=stock, items=items, max_per_user=max(stock, 1), database_url=database_url)
        return wrk(f"{server.url}/buy_ticket", seconds, connections, items, limit, extra)


def http_ceiling(seconds, workers, app="bench.ceiling_app:app", what="HTTP ceiling (constant 409)"):
    """The constant 409, on warm workers as the service's are."""
    announce(what, seconds)
    with gunicorn(workers, app) as ceiling:
        warm_up(f"{ceiling.url}/buy_ticket")
        return wrk(f"{ceiling.url}/buy_ticket", seconds, 50)


def interleaved(ceiling, service, rounds):
    """interleaved_with() for one ceiling: (ceiling, service)."""
    return interleaved_with({"ceiling": ceiling}, service, rounds)["ceiling"]


def interleaved_with(ceilings, service, rounds):
    """Measure the ceilings and the service in turn, the ceilings first and last, and divide each
    service figure by the mean of each ceiling just before and after it. The machine drifts by
    several percent within a minute; the round with the median ratio is the one reported.
    `ceilings` maps a name to its measurement; answers (ceiling, service) per name."""
    turns, services = [{name: run() for name, run in ceilings.items()}], []
    for _ in range(rounds):
        services.append(service())
        turns.append({name: run() for name, run in ceilings.items()})
    reports = {}
    for name in ceilings:
        runs = [turn[name] for turn in turns]
        ratios = [measured["per_second"] * 2 / (before["per_second"] + after["per_second"])
                  for measured, before, after in zip(services, runs, runs[1:])]
        median = sorted(range(rounds), key=ratios.__getitem__)[rounds // 2]
        before, after = runs[median], runs[median + 1]
        reported = {**before, "per_second": (before["per_second"] + after["per_second"]) / 2,
                    "samples": [run["per_second"] for run in runs]}
        reports[name] = reported, {**services[median], "ratios": ratios}
    return reports


def sale_with_a_held_item(database_url, stock):
    """Item 1 sells at once, item 2 (HELD_ITEM) holds each purchase HOLD_SECONDS; both `stock`."""
    reset_db.reset(stock=stock, max_per_user=AMPLE_STOCK, database_url=database_url)
    with db.connect(database_url) as conn:
        conn.execute(db.query("create_item"), {"name": "Held", "stock": stock, "max_per_user": AMPLE_STOCK,
                                               "sale_starts_at": None, "sale_ends_at": None,
                                               "hold_seconds": HOLD_SECONDS, "price": None, "currency": None})


def feature_cost(database_url, seconds, workers, rounds, off, on, name):
    """Purchases/s and sold-out answers/s with the feature on, against off. Both servers stay up
    and warm, and wrk loads them in turn, off first and last (off, on, off, ..., off): each `on`
    run is divided by the mean of the `off` runs around it, so that short runs follow the
    machine's drift closely, and the median ratio is the one reported."""
    cost = {}
    with off(workers) as off_server, on(workers) as on_server:
        for kind, stock in [("purchases", AMPLE_STOCK), ("sold_out", 0)]:
            sale_with_a_held_item(database_url, AMPLE_STOCK)
            for server in off_server, on_server:
                warm_up(f"{server.url}/buy_ticket", extra=getattr(server, "wrk_args", ()))
            sale_with_a_held_item(database_url, stock)
            baseline, measured = interleaved(
                lambda: load(off_server, seconds, f"{name} off, {kind}"),
                lambda: load(on_server, seconds, f"{name} on, {kind}"), rounds)
            refused = {status: n for status, n in measured["statuses"].items() if status in ("401", "403", "422")}
            if refused:  # the load itself was wrong (a token refused, say): its speed would mean nothing
                sys.exit(f"feature {name} on, {kind}: the service refused the requests: {refused}")
            cost[kind] = {"off": baseline["per_second"], "on": measured["per_second"],
                          "ratios": measured["ratios"], "ratio": sorted(measured["ratios"])[rounds // 2]}
    return cost


def load(server, seconds, what):
    announce(what, seconds, LOAD_GAP_SECONDS)
    return wrk(f"{server.url}/buy_ticket", seconds, 50, extra=getattr(server, "wrk_args", ()),
               first_item=getattr(server, "item_id", 1))


def features(options):
    """The feature rows to measure: every one with --full or --smoke, else HEADLINE_FEATURES."""
    return {name: servers for name, servers in FEATURES.items()
            if options.full or options.smoke or name in HEADLINE_FEATURES}


def planned(options):
    """How many measurements measure() makes, and about how many seconds they take."""
    ceiling_runs = 2 * (2 * options.rounds + 1) + options.rounds + 1  # and the bare-WSGI ceiling
    feature_runs = len(features(options)) * 2 * (2 * options.feature_rounds + 1)
    scaling_runs = 6 if options.scaling else 0
    seconds = ((ceiling_runs + scaling_runs) * (options.seconds + SETUP_SECONDS)
               + feature_runs * (options.feature_seconds + LOAD_GAP_SECONDS)
               + len(features(options)) * FEATURE_SETUP_SECONDS + BURST_SECONDS + SETUP_SECONDS)
    return ceiling_runs + feature_runs + 1 + scaling_runs, seconds


def measure(database_url, options):
    seconds, workers, rounds, burst_stock = options.seconds, options.workers, options.rounds, options.burst_stock
    results = {"workers": workers, "seconds": seconds, "rounds": rounds,
               "feature_seconds": options.feature_seconds, "feature_rounds": options.feature_rounds}
    results["database_ceiling"], results["purchases"] = interleaved(
        lambda: database_ceiling(database_url, seconds, workers),
        lambda: service_run(database_url, seconds, workers, AMPLE_STOCK, what="purchases, 1 hot item"), rounds)
    # POST /buy_ticket runs before Flask's dispatch, which the Flask ceiling pays: against
    # gunicorn alone too, from the same sold-out rounds.
    http = interleaved_with(
        {"flask": lambda: http_ceiling(seconds, workers),
         "bare": lambda: http_ceiling(seconds, workers, "bench.ceiling_app:bare", "HTTP ceiling, bare WSGI")},
        lambda: service_run(database_url, seconds, workers, 0, what="sold-out answers"), rounds)
    results["http_ceiling"], results["sold_out"] = http["flask"]
    results["bare_http_ceiling"], results["sold_out_against_bare"] = http["bare"]
    results["features"] = {name: feature_cost(database_url, options.feature_seconds, workers,
                                              options.feature_rounds, off, on, name)
                           for name, (off, on) in features(options).items()}
    # wrk runs for its whole -d even when its thread stopped early: the figures come from buy.lua.
    burst = service_run(database_url, BURST_SECONDS, workers, burst_stock, limit=10 * burst_stock,
                        what=f"burst: {burst_stock} units, {10 * burst_stock} requests")
    with db.connect(database_url) as conn:
        item = conn.execute(db.query("get_item"), {"item_id": 1}).fetchone()
    exact = item["remaining"] == 0 and burst["statuses"].get("201") == item["sold"] == burst_stock
    no_5xx = not any(status.startswith("5") for status in burst["statuses"])
    results["burst"] = {**burst, "stock": burst_stock, "exact_sell_out": exact, "no_5xx": no_5xx}
    if options.scaling:
        results["purchases_16_items"] = service_run(database_url, seconds, workers, AMPLE_STOCK, items=16,
                                                    what="purchases, 16 items")
        results["purchases_by_workers"] = {
            str(count): service_run(database_url, seconds, count, AMPLE_STOCK, what=f"purchases, {count} workers")
            for count in (1, 2, 3, 4, 8)
        }
    results["ratios"] = {
        "purchases_vs_database": results["purchases"]["per_second"] / results["database_ceiling"]["per_second"],
        "sold_out_vs_http": results["sold_out"]["per_second"] / results["http_ceiling"]["per_second"],
        "sold_out_vs_bare_http": (results["sold_out_against_bare"]["per_second"]
                                  / results["bare_http_ceiling"]["per_second"]),
        "burst_purchase_p99_vs_p50": results["burst"]["purchase_p99_ms"] / results["burst"]["purchase_p50_ms"],
    }
    return results


def print_table(results, smoke):
    rows = [("database ceiling (pgbench)", results["database_ceiling"]["per_second"], "", "", "")]
    for name, key in [("HTTP ceiling (constant 409)", "http_ceiling"),
                      ("HTTP ceiling, bare WSGI", "bare_http_ceiling"), ("purchases, 1 hot item", "purchases"),
                      ("sold-out answers", "sold_out"), ("purchases, 16 items", "purchases_16_items")]:
        if key in results:
            run = results[key]
            rows.append((name, run["per_second"], run["p50_ms"], run["p99_ms"], run["max_ms"]))
    for count, run in results.get("purchases_by_workers", {}).items():
        rows.append((f"purchases, {count} worker(s)", run["per_second"], run["p50_ms"], run["p99_ms"], run["max_ms"]))
    print(f"{'measure':<30} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, rate, p50, p99, peak in rows:
        numbers = "".join(f" {value:>8.1f}" if value != "" else f" {'':>8}" for value in (p50, p99, peak))
        print(f"{name:<30} {rate:>9.0f}{numbers}")
    for name, ceiling, service in [("database", "database_ceiling", "purchases"), ("HTTP", "http_ceiling", "sold_out"),
                                   ("bare WSGI", "bare_http_ceiling", "sold_out_against_bare")]:
        print(f"{name} ceiling " + " / ".join(f"{rate:.0f}" for rate in results[ceiling]["samples"])
              + f" around the {service} rounds, ratios " + " ".join(f"{r:.2f}" for r in results[service]["ratios"]))
    print("the table shows the round with the median ratio, and the mean of the ceilings around it")
    burst = results["burst"]
    print(f"burst: {burst['requests']} requests for {burst['stock']} units from 50 connections, "
          f"answers {burst['statuses']}, transport errors {burst['errors']}: sold out after "
          f"{burst['sold_out_seconds']:.2f} s, all answered after {burst['answered_seconds']:.2f} s; "
          f"purchases p50 {burst['purchase_p50_ms']:.1f} ms, p99 {burst['purchase_p99_ms']:.1f} ms, "
          f"max {burst['purchase_max_ms']:.1f} ms; all answers p50 {burst['p50_ms']:.1f} ms, "
          f"p99 {burst['p99_ms']:.1f} ms; exact sell-out: {burst['exact_sell_out']}, no 5xx: {burst['no_5xx']}")
    for name, cost in results["features"].items():
        print(f"feature {name}: on/off " + ", ".join(
            f"{label} {cost[kind]['on']:.0f}/{cost[kind]['off']:.0f} = {cost[kind]['ratio']:.2f} "
            f"({min(cost[kind]['ratios']):.2f}-{max(cost[kind]['ratios']):.2f})"
            for label, kind in [("purchases", "purchases"), ("sold-out", "sold_out")])
              + f" (target >= {FEATURE_TARGETS.get(name, FEATURE_TARGET):.2f}; median of "
              f"{len(cost['sold_out']['ratios'])} rounds, the lowest and highest in brackets)")
    ratios = results["ratios"]
    print(f"ratios: purchases/database ceiling {ratios['purchases_vs_database']:.2f} (target >= 0.60), "
          f"sold-out/HTTP ceiling {ratios['sold_out_vs_http']:.2f} (target >= 0.90), "
          f"sold-out/bare WSGI ceiling {ratios['sold_out_vs_bare_http']:.2f}, "
          f"burst purchase p99/p50 {ratios['burst_purchase_p99_vs_p50']:.1f} (target <= 4)")
    if smoke:
        print("smoke run: one second per measurement, so no figure above is judged against its target")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="service runs between ceiling runs (default 3)")
    settings = configuration.load_or_exit()
    parser.add_argument("--workers", type=int, default=settings.web_concurrency, help="WEB_CONCURRENCY")
    parser.add_argument("--feature-seconds", type=int, default=3,
                        help="length of each run of a feature row (default 3)")
    parser.add_argument("--feature-rounds", type=int, default=15,
                        help="runs with a feature on, each between two with it off (default 15)")
    parser.add_argument("--full", action="store_true",
                        help="every feature row and the scaling runs too (make bench-full; about 27 minutes)")
    parser.add_argument("--burst-stock", type=int, default=1000, help="units sold in the burst (default 1000)")
    parser.add_argument("--output", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--smoke", action="store_true",
                        help="a second of each measurement, one round, every feature row, no scaling: "
                             "checks that the benchmark runs")
    options = parser.parse_args()
    options.scaling = options.full and not options.smoke
    if options.smoke:
        options.seconds, options.rounds, options.burst_stock = 1, 1, 100
        options.feature_seconds, options.feature_rounds = 1, 1
        options.output = str(BENCH / "results" / "smoke.json")
    database_url = settings.database_url
    global progress
    progress = Progress(*planned(options))
    results = measure(database_url, options)
    print_table(results, options.smoke)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {options.output}")


if __name__ == "__main__":
    main()
