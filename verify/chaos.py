"""Chaos runs: a full burst with --retry through real gunicorn while faults are injected, then the
proof's database check and the history check (verify/history.py: every answer fits one serial order),
and the figures: answers, faults, lost and double sales, time to recover.

Modes: kill-worker (SIGKILL gunicorn workers), restart-db (private PostgreSQL restarted with
-m fast, then -m immediate), kill-connections (pg_terminate_backend on the service's connections),
lock-hog (another session holds the item's row lock longer than the retry budget), freeze-db
(every process of the private PostgreSQL stopped with SIGSTOP, longer than the retry budget, then
continued: a database that stops answering with its sockets open), holds (a sale that takes
payment: workers killed and PostgreSQL restarted while holds expire and the buyers' payments,
signed Stripe webhooks each delivered twice, some too late, race the expiry; waves of buyers until
the whole stock is paid for).
"""
import argparse
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import db
import reset_db
from deploy.local_server import ROOT, LocalServer
from verify import QUERIES, proof

RETRY_BUDGET_SECONDS = 1.0
# freeze-db: the retry budget, and a freeze over three times as long (docs/deadline.md).
FREEZE_BUDGET_SECONDS = 3.0
FREEZE_SECONDS = 10.0
MODES = ["kill-worker", "restart-db", "kill-connections", "lock-hog", "freeze-db", "holds"]
PRIVATE_DATABASE_MODES = {"restart-db", "freeze-db", "holds"}
# holds: each purchase held this long; half the first wave's buyers pay, each at a random moment
# up to PAY_WITHIN seconds after its hold, some of them too late.
HOLD_SECONDS = 3
CONFIRM_RATIO = 0.5
PAY_WITHIN_SECONDS = 1.3 * HOLD_SECONDS
SWEEP_SECONDS = 1.0  # each worker's sweeper, as a service runs by default (HOLD_SWEEP_SECONDS)
# What gunicorn's master logs when a worker overran its timeout and was killed.
WORKER_TIMEOUT_LINE = "WORKER TIMEOUT"
REPEATS = 3  # kill-worker and kill-connections strike this many times
RESTARTS = ["fast", "immediate"]  # restart-db: a clean shutdown, then a crash


def kill_worker(server, options):
    """SIGKILL a random worker REPEATS times; gunicorn starts new ones."""
    for _ in range(REPEATS):
        time.sleep(options.pause)
        os.kill(random.choice(server.worker_pids()), signal.SIGKILL)
    return REPEATS


def restart_db(server, options):
    """Restart the private PostgreSQL twice, each time down for a second: cleanly, then as a crash."""
    for mode in RESTARTS:
        time.sleep(options.pause)
        subprocess.run([ROOT / "deploy" / "pg.sh", "restart", mode, "1"], check=True, capture_output=True)
    return len(RESTARTS)


def kill_connections(server, options):
    """Terminate every connection of the service REPEATS times."""
    for _ in range(REPEATS):
        time.sleep(options.pause)
        with db.connect(options.database_url) as conn:
            conn.execute(db.query("terminate_connections", QUERIES), {"application_name": db.APPLICATION_NAME})
    return REPEATS


def lock_hog(server, options):
    """Hold the item's row lock for twice the retry budget, once."""
    time.sleep(options.pause)
    with db.connect(options.database_url) as conn, conn.transaction():
        conn.execute(db.query("lock_item", QUERIES), {"item_id": proof.ITEM_ID})
        time.sleep(2 * options.budget)
    return 1


@contextmanager
def frozen_database():
    """Every process of the private PostgreSQL stopped (SIGSTOP) for the block, then continued,
    whatever happens in it: the server keeps its sockets open and answers nothing."""
    pg = [ROOT / "deploy" / "pg.sh", "signal"]
    subprocess.run([*pg, "STOP"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*pg, "CONT"], check=True, capture_output=True)


def freeze_db(server, options):
    """Freeze the private PostgreSQL for options.freeze seconds, once."""
    time.sleep(options.pause)
    with frozen_database():
        time.sleep(options.freeze)
    return 1


def holds_faults(server, options):
    """Workers killed, then PostgreSQL restarted, while the first wave's holds are made, paid
    for and expire."""
    return kill_worker(server, options) + restart_db(server, options)


FAULTS = {"kill-worker": kill_worker, "restart-db": restart_db, "kill-connections": kill_connections,
          "lock-hog": lock_hog, "freeze-db": freeze_db, "holds": holds_faults}


def inject(mode, server, options, report):
    report["faults"] = FAULTS[mode](server, options)
    report["faults_ended_at"] = time.monotonic()  # as the answers' times (proof.Purchase)


def figures(mode, purchases, rows, failures, report):
    """The closing figures of one mode, as a dict. The slowest answer is the slowest of any
    attempt as its client saw it, waiting for a free worker included (a transport error counts
    with the time the client waited), against the budget."""
    attempts = [(status, latency, at) for p in purchases
                for (status, _), latency, at in zip(p.answers, p.latencies, p.answered_at)]
    statuses = Counter(status for status, _, _ in attempts)
    rows_by_key = Counter(row["idempotency_key"] for row in rows)
    recovered = [at for status, _, at in attempts if status == 201 and at > report["faults_ended_at"]]
    return {
        "mode": mode,
        "requests": len(attempts),
        "faults": report["faults"],
        "201": sum(p.acknowledged for p in purchases),
        "409": sum(p.final[0] == 409 for p in purchases),
        "503": statuses[503],
        "503 max s": round(max((latency for status, latency, _ in attempts if status == 503), default=0), 2),
        "slowest s": round(max((latency for _, latency, _ in attempts), default=0), 2),
        "budget s": report["budget"],
        "other 5xx": sum(count for status, count in statuses.items() if status and status >= 500 and status != 503),
        "transport errors": statuses[None],
        "worker timeouts": report["worker_timeouts"],
        "lost": sum(rows_by_key[p.key] != 1 for p in purchases if p.acknowledged),
        "double sales": sum(count > 1 for count in rows_by_key.values())
        + sum(len(set(p.purchase_ids)) > 1 for p in purchases),
        "recovery s": round(min(recovered) - report["faults_ended_at"], 2) if recovered else None,
        "history": report.get("history", "-"),
        "verdict": "ok" if not failures else "FAILED",
    }


def run_mode(mode, options):
    """One burst under one kind of fault; returns its figures and the proof's failures."""
    held = mode == "holds"
    options.hold_seconds = HOLD_SECONDS if held else None
    options.confirm_ratio, options.pay_within = CONFIRM_RATIO, PAY_WITHIN_SECONDS
    reset_db.reset(stock=options.stock, max_per_user=options.max_per_user, hold_seconds=options.hold_seconds,
                   database_url=options.database_url, **proof.sale_price(options))
    # A held sale is paid by webhooks signed with a secret of this run's own, as Stripe signs them.
    options.webhook_secret = options.webhook_secret or f"whsec_{secrets.token_hex(16)}"
    options.budget = options.budget_seconds or (FREEZE_BUDGET_SECONDS if mode == "freeze-db" else RETRY_BUDGET_SECONDS)
    # Buyers keep retrying through the fault: each attempt during it costs at least a second.
    options.attempts = proof.RETRY_ATTEMPTS + (int(options.freeze) + 1 if mode == "freeze-db" else 0)
    report = {"budget": options.budget}
    with LocalServer(WEB_CONCURRENCY=str(options.workers), DB_RETRY_BUDGET_SECONDS=str(options.budget),
                     HOLD_SWEEP_SECONDS=str(SWEEP_SECONDS), STRIPE_WEBHOOK_SECRET=options.webhook_secret) as server:
        options.url = server.url
        faults = threading.Thread(target=inject, args=(mode, server, options, report))
        faults.start()
        try:
            purchases = proof.held_sale(options) if held else proof.run_burst(options, proof.make_purchases(options))
        finally:
            faults.join()  # a frozen database is continued before anything else
        report["worker_timeouts"] = server.output().count(WORKER_TIMEOUT_LINE)
    judgement = proof.judge(options, purchases)
    if held:
        states = Counter(row["status"] for row in judgement.rows)
        late = sum(p.outcome == "late" for p in purchases)
        print(f"  holds: {len(judgement.rows)} made, {states['confirmed']} confirmed, {states['expired']} expired "
              f"({late} of them paid for too late), {states['held']} still held")
        print(f"  payments: {judgement.money.line()}")
    for line in judgement.history.lines:
        print(f"  {line}")
    report["history"] = "ok" if judgement.history.ok else f"{len(judgement.history.violations)} violations"
    return figures(mode, purchases, judgement.rows, judgement.failures, report), judgement.failures


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", help=f"some of {', '.join(MODES)} (default: all)")
    parser.add_argument("--requests", type=int, default=4000, help="logical purchases per mode (default 4000)")
    parser.add_argument("--stock", type=int, default=3000, help="units on sale (default 3000)")
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds before each fault (default 0.5)")
    parser.add_argument("--budget", type=float, help=f"DB_RETRY_BUDGET_SECONDS (default {RETRY_BUDGET_SECONDS:g}, "
                                                     f"freeze-db {FREEZE_BUDGET_SECONDS:g})")
    parser.add_argument("--freeze", type=float, default=FREEZE_SECONDS,
                        help=f"seconds freeze-db keeps the database stopped (default {FREEZE_SECONDS:g})")
    options = parser.parse_args(argv)
    if options.budget is not None and options.budget < 0.01:
        parser.error("--budget must be at least 0.01")
    if options.freeze < 0:
        parser.error("--freeze must be at least 0")
    unknown = set(options.modes) - set(MODES) - {"all"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    proof_options = proof.make_options(retry=True, requests=options.requests, stock=options.stock,
                                       processes=options.processes)
    proof_options.modes = MODES if not options.modes or "all" in options.modes else options.modes
    proof_options.workers, proof_options.pause = options.workers, options.pause
    proof_options.budget_seconds, proof_options.freeze = options.budget, options.freeze
    return proof_options


def private_database(options):
    """True when DATABASE_URL is the private PostgreSQL of deploy/pg.sh, which restart-db restarts
    and freeze-db stops."""
    private = subprocess.run([ROOT / "deploy" / "pg.sh", "private-url"], capture_output=True, text=True)
    return private.stdout.strip() == options.database_url


def main(argv=None):
    options = parse_options(argv)
    results = []
    for mode in options.modes:
        if mode in PRIVATE_DATABASE_MODES and not private_database(options):
            print(f"{mode} skipped: DATABASE_URL is not the private PostgreSQL of deploy/pg.sh")
            continue
        print(f"--- {mode}: {options.requests} purchases for {options.stock} units, with --retry")
        result, failures = run_mode(mode, options)
        results.append(result)
        for failure in failures:
            print(f"  FAILURE: {failure}")
    columns = list(results[0]) if results else []
    print("  ".join(f"{column:>16}" for column in columns))
    for result in results:
        print("  ".join(f"{str(result[column]):>16}" for column in columns))
    failed = [result["mode"] for result in results if result["verdict"] != "ok"]
    print(f"FAILURE: {', '.join(failed)}" if failed else "SUCCESS: every chaos run kept every promise.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
