"""What expiring holds costs, measured on the database alone (no HTTP), for docs/holds.md:

1. a purchase (buy_ticket.sql) on an item sold at once against one (buy_held_ticket.sql) on an
   item with a payment window and nothing due, interleaved, µs per transaction;
2. a purchase that finds N holds past their expiry and returns them (the item's row lock is held
   that long; buy_ticket_expiring_holds.sql), for N = 0, 10, 100, 1000, 10000;
3. a sweep (expire_holds.sql) with nothing due, and with N due.

Run: `.venv/bin/python -m bench.expiry` with DATABASE_URL set (it resets the database).
"""
import statistics
import time
import uuid
from pathlib import Path

import db
import reset_db
from flashsale import settings as configuration

ROOT = Path(__file__).resolve().parent.parent

ROUNDS = 7
PURCHASES_PER_ROUND = 500
DUE_COUNTS = (0, 10, 100, 1000, 10000)
STOCK = 10_000_000
HELD_ITEM = 3  # made by main(); items 1 and 2 sell at once


def purchase(conn, item_id, statement=None):
    statement = statement or ("buy_held_ticket" if item_id == HELD_ITEM else "buy_ticket")
    with conn.transaction():
        return conn.execute(db.query(statement), {"item_id": item_id, "user_id": uuid.uuid4().hex,
                                                     "quantity": 1, "idempotency_key": uuid.uuid4().hex}).fetchone()


def microseconds_per_purchase(conn, item_id):
    started = time.perf_counter()
    for _ in range(PURCHASES_PER_ROUND):
        purchase(conn, item_id)
    return (time.perf_counter() - started) / PURCHASES_PER_ROUND * 1e6


def past_expiry(conn, item_id):
    with conn.transaction():
        conn.execute(db.query("expire_all_holds_now", ROOT / "bench"), {"item_id": item_id})


def make_due_holds(conn, item_id, count):
    """Exactly `count` holds of the item past their expiry: the open ones expired first."""
    past_expiry(conn, item_id)
    db.expire_holds(conn)
    for _ in range(count):
        purchase(conn, item_id)
    past_expiry(conn, item_id)


def timed(conn, run):
    started = time.perf_counter()
    rows = run()
    return (time.perf_counter() - started) * 1000, rows


def main():
    db.configure(configuration.load_or_exit())
    with db.connect() as conn:
        conn.prepare_threshold = 0
        reset_db.reset(stock=STOCK, items=2)
        with conn.transaction():
            conn.execute(db.query("create_item"), {"name": "Held", "stock": STOCK, "max_per_user": STOCK,
                                                   "sale_starts_at": None, "sale_ends_at": None,
                                                   "hold_seconds": 3600, "price": None, "currency": None})
        microseconds_per_purchase(conn, 1), microseconds_per_purchase(conn, HELD_ITEM)  # warm
        at_once, held = [], []
        for _ in range(ROUNDS):
            at_once.append(microseconds_per_purchase(conn, 1))
            held.append(microseconds_per_purchase(conn, HELD_ITEM))
        print(f"1. purchase transaction, µs (median of {ROUNDS} x {PURCHASES_PER_ROUND}): sold at once "
              f"{statistics.median(at_once):.0f}, held for payment {statistics.median(held):.0f} "
              f"(purchases/s held against at once: {statistics.median(a / h for h, a in zip(held, at_once)):.2f})")
        for count in DUE_COUNTS:
            make_due_holds(conn, HELD_ITEM, count)
            milliseconds, row = timed(conn, lambda: purchase(conn, HELD_ITEM, "buy_ticket_expiring_holds"))
            print(f"2. a purchase that expires {row['expired']} due holds: {milliseconds:.2f} ms")
        for count in DUE_COUNTS:
            make_due_holds(conn, HELD_ITEM, count)
            milliseconds, rows = timed(conn, lambda: db.expire_holds(conn))
            print(f"3. a sweep that expires {sum(row['holds'] for row in rows)} holds: {milliseconds:.2f} ms")


if __name__ == "__main__":
    main()
