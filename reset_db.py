"""Drop every table, make the schema again through the migrations, then put new items on sale.

For the proof, the benchmark and tests; a sale of your own is made with `flask --app app sale
create`. On a database that holds purchases it says what it would delete and stops unless given
--yes."""
import argparse
import sys
from datetime import datetime

import psycopg

import db
from flashsale import payments, schema
from flashsale import settings as configuration


def reset(stock=100, items=1, max_per_user=None, sale_starts_at=None, sale_ends_at=None,
          database_url=None, hold_seconds=None, price=None, currency=None):
    """Drop the tables, migrate, and seed items 1..items with `stock` units each, with a payment
    window of `hold_seconds` (None: they sell at once) and a `price` in minor units of `currency`
    (None: no price). Asks nothing."""
    with db.connect(database_url) as conn, schema.migration_lock(conn):
        with conn.transaction():
            conn.execute(db.query("drop_schema"))
        schema.apply_pending(conn)
        with conn.transaction():
            conn.execute(db.query("seed_items"), {
                "count": items,
                "stock": stock,
                "max_per_user": max_per_user or max(stock, 1),
                "sale_starts_at": sale_starts_at,
                "sale_ends_at": sale_ends_at,
                "hold_seconds": hold_seconds,
                "price": price,
                "currency": currency,
            })


def contents(database_url=None):
    """(items, purchases) the database holds now; (0, 0) before it has the tables."""
    with db.connect(database_url) as conn, conn.transaction():
        if not conn.execute(db.query("sales_tables_exist")).fetchone()["exist"]:
            return 0, 0
        row = conn.execute(db.query("count_items_and_purchases")).fetchone()
    return row["items"], row["purchases"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stock", type=int, default=100, help="units of each item (default 100)")
    parser.add_argument("--items", type=int, default=1, help="number of items, ids 1..N (default 1)")
    parser.add_argument("--max-per-user", type=int, help="units one user may buy of an item (default: the stock)")
    parser.add_argument("--sale-starts-at", type=datetime.fromisoformat, help="ISO 8601 time the sale opens")
    parser.add_argument("--sale-ends-at", type=datetime.fromisoformat, help="ISO 8601 time the sale closes")
    parser.add_argument("--hold-seconds", type=int,
                        help="payment window: each purchase holds its units this long (default: none, sold at once)")
    parser.add_argument("--price", help="price of each item, e.g. 49.90 (with --currency; default: none)")
    parser.add_argument("--currency", help="ISO 4217 currency of --price, e.g. EUR")
    parser.add_argument("--yes", action="store_true",
                        help="delete the purchases the database holds without asking")
    args = parser.parse_args(argv)
    if args.stock < 0 or args.items < 1 or (args.max_per_user is not None and args.max_per_user < 1):
        parser.error("--stock must be >= 0, --items >= 1 and --max-per-user >= 1")
    if args.hold_seconds is not None and args.hold_seconds < 1:
        parser.error("--hold-seconds must be >= 1")
    price = None
    if (args.price is None) != (args.currency is None):
        parser.error("--price and --currency go together")
    if args.price is not None:
        try:
            args.currency = payments.currency_code(args.currency)
            price = payments.minor_units(args.price, args.currency)
        except ValueError as exc:
            parser.error(f"--price/--currency: {exc}")
    database_url = configuration.load_or_exit().database_url
    try:
        items, purchases = contents(database_url)
        if purchases:
            print(f"reset_db: this deletes {items} item(s) and {purchases} purchase(s).", file=sys.stderr)
            if not args.yes:
                sys.exit("reset_db: nothing deleted; run again with --yes to delete them.")
        reset(args.stock, args.items, args.max_per_user, args.sale_starts_at, args.sale_ends_at, database_url,
              args.hold_seconds, price, args.currency)
    except psycopg.Error as exc:
        sys.exit(f"reset_db: cannot reset the database: {exc}")
    window = ""
    if args.sale_starts_at or args.sale_ends_at:
        window = f", on sale from {args.sale_starts_at or 'now'} to {args.sale_ends_at or 'sold out'}"
    print(f"Database reset: {args.items} item(s) with {args.stock} units each, "
          f"at most {args.max_per_user or max(args.stock, 1)} per user{window}"
          + (f", at {payments.display(price, args.currency)}" if price is not None else "")
          + (f", held {args.hold_seconds} s for payment." if args.hold_seconds else "."))


if __name__ == "__main__":
    main()
