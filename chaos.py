"""Chaos runs: a full burst with --retry through real gunicorn while faults are injected, then the
proof's database check, and the figures: answers, faults, lost and double sales, time to recover.

Modes: kill-worker (SIGKILL gunicorn workers), restart-db (private PostgreSQL restarted with
-m fast, then -m immediate), kill-connections (pg_terminate_backend on the service's connections),
lock-hog (another session holds the item's row lock longer than the retry budget).
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
import db
import proof_of_correctness as proof
import reset_db
from local_server import ROOT, LocalServer

RETRY_BUDGET_SECONDS = 1.0
MODES = ["kill-worker", "restart-db", "kill-connections", "lock-hog"]


def kill_worker(server, pause):
    """SIGKILL a random worker three times; gunicorn starts new ones."""
    for _ in range(3):
        time.sleep(pause)
        os.kill(random.choice(server.worker_pids()), signal.SIGKILL)
    return 3


def restart_db(server, pause):
    """Restart the private PostgreSQL twice, each time down for a second: cleanly, then as a crash."""
    for mode in ["fast", "immediate"]:
        time.sleep(pause)
        subprocess.run([ROOT / "scripts" / "pg.sh", "restart", mode, "1"], check=True, capture_output=True)
    return 2


def kill_connections(server, pause):
    """Terminate every connection of the service three times."""
    for _ in range(3):
        time.sleep(pause)
        with db.connect() as conn:
            conn.execute(db.query("terminate_connections", db.TEST_QUERIES), {"application_name": db.APPLICATION_NAME})
    return 3


def lock_hog(server, pause):
    """Hold the item's row lock for twice the retry budget, once."""
    time.sleep(pause)
    with db.connect() as conn, conn.transaction():
        conn.execute(db.query("lock_item", db.TEST_QUERIES), {"item_id": proof.ITEM_ID})
        time.sleep(2 * RETRY_BUDGET_SECONDS)
    return 1


FAULTS = {"kill-worker": kill_worker, "restart-db": restart_db,
          "kill-connections": kill_connections, "lock-hog": lock_hog}


def inject(mode, server, pause, report):
    report["faults"] = FAULTS[mode](server, pause)
    report["faults_ended_at"] = time.time()


def figures(mode, purchases, rows, failures, report):
    """The closing figures of one mode, as a dict."""
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
        "500": statuses[500],
        "transport errors": statuses[None],
        "lost": sum(rows_by_key[p.key] != 1 for p in purchases if p.acknowledged),
        "double sales": sum(count > 1 for count in rows_by_key.values())
        + sum(len(set(p.purchase_ids)) > 1 for p in purchases),
        "recovery s": round(min(recovered) - report["faults_ended_at"], 2) if recovered else None,
        "verdict": "ok" if not failures else "FAILED",
    }


def run_mode(mode, options):
    """One burst under one kind of fault; returns its figures and the proof's failures."""
    reset_db.reset(stock=options.stock, max_per_user=options.max_per_user, database_url=options.database_url)
    report = {}
    with LocalServer(WEB_CONCURRENCY=str(options.workers),
                     DB_RETRY_BUDGET_SECONDS=str(RETRY_BUDGET_SECONDS)) as server:
        options.url = server.url
        faults = threading.Thread(target=inject, args=(mode, server, options.pause, report))
        faults.start()
        purchases = proof.run_burst(options, proof.make_purchases(options))
        faults.join()
    item, rows = proof.database_state(options.database_url)
    failures = proof.verdict(options, purchases, item, rows)
    return figures(mode, purchases, rows, failures, report), failures


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", help=f"some of {', '.join(MODES)} (default: all)")
    parser.add_argument("--requests", type=int, default=4000, help="logical purchases per mode (default 4000)")
    parser.add_argument("--stock", type=int, default=3000, help="units on sale (default 3000)")
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds before each fault (default 0.5)")
    options = parser.parse_args(argv)
    unknown = set(options.modes) - set(MODES) - {"all"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    proof_options = proof.parse_options(["--retry", "--requests", str(options.requests), "--stock",
                                         str(options.stock), "--processes", str(options.processes)])
    proof_options.modes = MODES if not options.modes or "all" in options.modes else options.modes
    proof_options.workers, proof_options.pause = options.workers, options.pause
    return proof_options


def private_database(options):
    """True when DATABASE_URL is the private PostgreSQL of scripts/pg.sh, which restart-db restarts."""
    private = subprocess.run([ROOT / "scripts" / "pg.sh", "private-url"], capture_output=True, text=True)
    return private.stdout.strip() == options.database_url


def main(argv=None):
    options = parse_options(argv)
    results = []
    for mode in options.modes:
        if mode == "restart-db" and not private_database(options):
            print("restart-db skipped: DATABASE_URL is not the private PostgreSQL of scripts/pg.sh")
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
