"""Drop and recreate the schema from queries/, then put the items on sale."""
import argparse
import sys
from datetime import datetime

import psycopg

import db
import settings as configuration

SCHEMA = ["drop_schema", "create_items", "create_purchases"]


def reset(stock=100, items=1, max_per_user=None, sale_starts_at=None, sale_ends_at=None,
          database_url=None):
    """Recreate the tables and seed items 1..items with `stock` units each."""
    with db.connect(database_url) as conn, conn.transaction():
        for name in SCHEMA:
            conn.execute(db.query(name))
        conn.execute(db.query("seed_items"), {
            "count": items,
            "stock": stock,
            "max_per_user": max_per_user or max(stock, 1),
            "sale_starts_at": sale_starts_at,
            "sale_ends_at": sale_ends_at,
        })


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stock", type=int, default=100, help="units of each item (default 100)")
    parser.add_argument("--items", type=int, default=1, help="number of items, ids 1..N (default 1)")
    parser.add_argument("--max-per-user", type=int, help="units one user may buy of an item (default: the stock)")
    parser.add_argument("--sale-starts-at", type=datetime.fromisoformat, help="ISO 8601 time the sale opens")
    parser.add_argument("--sale-ends-at", type=datetime.fromisoformat, help="ISO 8601 time the sale closes")
    args = parser.parse_args(argv)
    if args.stock < 0 or args.items < 1 or (args.max_per_user is not None and args.max_per_user < 1):
        parser.error("--stock must be >= 0, --items >= 1 and --max-per-user >= 1")
    database_url = configuration.load_or_exit().database_url
    try:
        reset(args.stock, args.items, args.max_per_user, args.sale_starts_at, args.sale_ends_at, database_url)
    except psycopg.Error as exc:
        sys.exit(f"reset_db: cannot reset the database: {exc}")
    window = ""
    if args.sale_starts_at or args.sale_ends_at:
        window = f", on sale from {args.sale_starts_at or 'now'} to {args.sale_ends_at or 'sold out'}"
    print(f"Database reset: {args.items} item(s) with {args.stock} units each, "
          f"at most {args.max_per_user or max(args.stock, 1)} per user{window}.")


if __name__ == "__main__":
    main()
