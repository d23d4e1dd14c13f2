"""Command line of the service, under `flask --app app`: `db` for the schema, `sale` for the sales.

Registered by app.create_app() (init_app). Every statement is short and runs in its own
transaction: a command never holds an item's row lock longer than one UPDATE, so it may run while
a burst is being served. Bad input, a missing item or an unreachable database gives one line on
stderr and exit status 2, and nothing is written."""
import csv
import itertools
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import psycopg

import db
from db import MAX_INT
from flashsale import payments, schema

MAX_NAME_LENGTH = 200
LIST_PAGE_SIZE = 100
EXPORT_BATCH_ROWS = 5000  # rows fetched from the server-side cursor at a time
EXPORT_PROGRESS_ROWS = 100_000
NAME_COLUMN_WIDTH = 30
EXPORT_COLUMNS = ["purchase_id", "user_id", "quantity", "created_at", "status", "amount", "currency", "payment",
                  "reference"]
MAX_REFERENCE_LENGTH = 200  # with "manual:<purchase id>:", within payment_events.id's 255
MAX_HOLD_SECONDS = 86400  # a payment window of up to a day


class CommandError(click.ClickException):
    """One line on stderr and exit status 2."""
    exit_code = 2

    def show(self, file=None):
        click.echo(self.format_message(), err=True)


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class OneLineGroup(click.Group):
    """A command group whose errors are one line: click's usage errors (a missing option, a bad
    number) lose their usage text, and database errors lose their traceback."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `flask sale` alone prints the help
        except click.UsageError as exc:
            raise CommandError(usage_line(exc, self.name)) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise CommandError(usage_line(exc, self.name)) from None
        except psycopg.OperationalError as exc:
            raise CommandError(f"{invoked(ctx)}: cannot reach the database: {first_line(exc)}") from None
        except psycopg.Error as exc:
            raise CommandError(f"{invoked(ctx)}: the database refused: {first_line(exc)}") from None


def command_name(ctx):
    """`flask sale show`, however flask was started (`python -m flask` say)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["flask", *reversed(names)])


def invoked(ctx):
    """The command that failed: the group's context names the sub-command it was running."""
    return " ".join(filter(None, [command_name(ctx), ctx.invoked_subcommand]))


def usage_line(exc, group):
    path = command_name(exc.ctx) if exc.ctx else f"flask {group}"
    return f"{path}: {exc.format_message()} (see --help)"


class Timestamp(click.ParamType):
    """An ISO-8601 time with its zone: a time without one could mean any moment."""
    name = "ISO-8601"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time, e.g. 2026-12-01T10:00:00+01:00", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone: add one, e.g. {value}Z for UTC or {value}+01:00",
                      param, ctx)
        return moment


ITEM_ID = click.IntRange(1, MAX_INT)
UNITS = click.IntRange(1, MAX_INT)


def utc(moment):
    """A time as ISO-8601 in UTC, to the second: 2026-12-01T10:00:00Z."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def precise_utc(moment):
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def window(item):
    starts, ends = item["sale_starts_at"], item["sale_ends_at"]
    if starts and ends:
        return f"{utc(starts)} to {utc(ends)}"
    if starts:
        return f"from {utc(starts)}"
    if ends:
        return f"until {utc(ends)}"
    return "always"


def state(item):
    return item["state"].replace("_", " ")  # the view item_figures says 'sold_out'


def payment_window(item):
    return f"{item['hold_seconds']} s" if item["hold_seconds"] else "none"


def price(item):
    return payments.display(item["price"], item["currency"]) if item["price"] is not None else "none"


def revenue(item):
    """Money of the payments that confirmed holds, and the refunds owed, flagged."""
    text = payments.display(item["revenue"], item["currency"]) if item["currency"] else "-"
    return text + (f" ({item['refunds_owed']} refunds owed)" if item["refunds_owed"] else "")


def run(conn, name, params=None):
    """The rows of queries/<name>.sql, in a transaction of their own."""
    with conn.transaction():
        return conn.execute(db.query(name), params or {}).fetchall()


def find_item(conn, item_id, command):
    """The item's row of get_item.sql, or a CommandError."""
    rows = run(conn, "get_item", {"item_id": item_id})
    if not rows:
        raise CommandError(f"flask sale {command}: there is no item {item_id}")
    return rows[0]


def stats(conn, item_ids):
    """item id -> its row of sale_stats.sql."""
    rows = run(conn, "sale_stats", {"item_ids": list(item_ids)})
    return {row["item_id"]: row for row in rows}


def init_app(app):
    app.cli.add_command(db_group)
    app.cli.add_command(sale_group)
    app.cli.add_command(payments_group)


# --- flask db ---------------------------------------------------------------------------------

@click.group("db", cls=OneLineGroup)
def db_group():
    """The database schema: numbered migrations in queries/migrations/."""


@db_group.command("upgrade")
def db_upgrade():
    """Apply the migrations the database lacks, in order, each in its own transaction.

    Safe to run at any time and from several places at once: an advisory lock makes them take
    turns, and a migration applied once is never applied again."""
    def progress(migration):
        click.echo(f"Applying {migration.label} ...")

    with db.connect() as conn:
        applied = schema.upgrade(conn, progress)
    total = len(schema.migrations())
    click.echo(f"Schema up to date: {total} migrations, {len(applied)} applied now.")


@db_group.command("status")
def db_status():
    """List the code's migrations and when each was applied to the database."""
    with db.connect() as conn:
        missing = {migration.version for migration in schema.pending(conn)}
        applied = {}
        if len(missing) < len(schema.migrations()):
            applied = {row["version"]: row["applied_at"] for row in run(conn, "list_applied_migrations")}
    for migration in schema.migrations():
        when = "pending" if migration.version in missing else f"applied {utc(applied[migration.version])}"
        click.echo(f"{migration.label:<40} {when}")
    unknown = sorted(applied.keys() - {migration.version for migration in schema.migrations()})
    if unknown:
        click.echo(f"Applied but unknown to this code (a newer version made them): {unknown}")
    if missing:
        click.echo(f"{len(missing)} pending: run `{schema.UPGRADE_COMMAND}`.")


# --- flask sale -------------------------------------------------------------------------------

@click.group("sale", cls=OneLineGroup)
def sale_group():
    """Create and run sales: every command may run while buyers are being served."""


@sale_group.command("create")
@click.option("--name", required=True, help="what is sold, as buyers see it")
@click.option("--stock", type=UNITS, required=True, help="units on sale, a whole number >= 1")
@click.option("--max-per-user", type=UNITS, help="units one user may buy (default: the stock)")
@click.option("--starts-at", type=Timestamp(), help="when the sale opens, ISO-8601 with a zone (default: now)")
@click.option("--ends-at", type=Timestamp(), help="when it closes, ISO-8601 with a zone (default: never)")
@click.option("--hold-seconds", type=click.IntRange(1, MAX_HOLD_SECONDS),
              help="payment window: a purchase holds its units this long until confirmed, then they "
                   "go back on sale (default: none, a purchase is final at once)")
@click.option("--price", help="price of one unit, e.g. 49.90 (with --currency; default: none)")
@click.option("--currency", help="ISO 4217 code of the price's currency, e.g. EUR")
def sale_create(name, stock, max_per_user, starts_at, ends_at, hold_seconds, price, currency):
    """Put a new item on sale and print its id."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise CommandError(f"flask sale create: --name must be 1 to {MAX_NAME_LENGTH} characters")
    if starts_at and ends_at and ends_at <= starts_at:
        raise CommandError("flask sale create: --ends-at must come after --starts-at")
    if ends_at and ends_at <= datetime.now(timezone.utc):
        raise CommandError("flask sale create: --ends-at is in the past")
    minor_units, currency = price_option(price, currency)
    with db.connect() as conn:
        row = run(conn, "create_item", {
            "name": name, "stock": stock, "max_per_user": max_per_user or stock,
            "sale_starts_at": starts_at, "sale_ends_at": ends_at, "hold_seconds": hold_seconds,
            "price": minor_units, "currency": currency,
        })[0]
    click.echo(row["id"])


def price_option(price, currency):
    """--price and --currency as (minor units, ISO 4217 code); (None, None) without them. The
    currency's decimals are CLDR's (payments.digits), not a table of ours."""
    if price is None and currency is None:
        return None, None
    if price is None or currency is None:
        raise CommandError("flask sale create: --price and --currency go together")
    try:
        currency = payments.currency_code(currency)
        return payments.minor_units(price, currency), currency
    except ValueError as exc:
        raise CommandError(f"flask sale create: --price/--currency: {exc}") from None


def list_rows(conn):
    """Every item, page by page, each with its buyers."""
    after = 0
    for _ in itertools.count():
        page = run(conn, "list_items", {"after": after, "limit": LIST_PAGE_SIZE})
        found = stats(conn, (item["id"] for item in page))
        for item in page:
            yield item, found.get(item["id"], {}).get("buyers", 0)
        if len(page) < LIST_PAGE_SIZE:
            return
        after = page[-1]["id"]


def print_table(header, rows, right=()):
    """Rows of cells in columns as wide as their widest cell; the columns of `right` aligned right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        cells = [cell.rjust(width) if index in right else cell.ljust(width)
                 for index, (cell, width) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())


def short(name):
    return name if len(name) <= NAME_COLUMN_WIDTH else name[: NAME_COLUMN_WIDTH - 3] + "..."


@sale_group.command("list")
def sale_list():
    """Print every sale: id, name, stock, sold, held, remaining, buyers, window, payment window,
    price, revenue (refunds owed flagged) and state."""
    with db.connect() as conn:
        rows = [[str(item["id"]), short(item["name"]), str(item["stock"]), str(item["sold"]),
                 str(item["held"]), str(item["remaining"]), str(buyers), window(item),
                 payment_window(item), price(item), revenue(item), state(item)]
                for item, buyers in list_rows(conn)]
    header = ["id", "name", "stock", "sold", "held", "remaining", "buyers", "window", "payment", "price",
              "revenue", "state"]
    print_table(header, rows, right={0, 2, 3, 4, 5, 6})  # numbers to the right
    if not rows:
        click.echo("(no items: create one with `flask --app app sale create`)")


def sell_out_seconds(item, found):
    """Seconds from the sale's opening (its window's start, or its first sale) to the sale of its
    last unit; None while units remain."""
    if item["remaining"] > 0 or not found:
        return None
    opened = found["first_sale_at"]
    if item["sale_starts_at"] is not None:
        opened = min(opened, item["sale_starts_at"])
    return (found["last_sale_at"] - opened).total_seconds()


@sale_group.command("show")
@click.argument("item_id", metavar="ID", type=ITEM_ID)
def sale_show(item_id):
    """Print one sale: its figures, window, payment window and state, its first and last sale,
    and how long it took to sell out."""
    with db.connect() as conn:
        item = find_item(conn, item_id, "show")
        found = stats(conn, [item_id]).get(item_id)
    seconds = sell_out_seconds(item, found)
    lines = [
        ("id", item["id"]),
        ("name", item["name"]),
        ("state", state(item)),
        ("stock", item["stock"]),
        ("sold", item["sold"]),
        ("held", f"{item['held']} ({found['holds'] if found else 0} holds open)"),
        ("remaining", item["remaining"]),
        ("buyers", found["buyers"] if found else 0),
        ("max per user", item["max_per_user"]),
        ("window", window(item)),
        ("payment", payment_window(item)),
        ("price", price(item)),
        ("revenue", revenue(item)),
        ("first sale", precise_utc(found["first_sale_at"]) if found else "-"),
        ("last sale", precise_utc(found["last_sale_at"]) if found else "-"),
        ("sold out in", f"{seconds:.3f} s" if seconds is not None else "-"),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<14}{value}")


@sale_group.command("end")
@click.argument("item_id", metavar="ID", type=ITEM_ID)
def sale_end(item_id):
    """Close the sale's window now. A sale that has not started yet never opens."""
    with db.connect() as conn:
        rows = run(conn, "end_sale", {"item_id": item_id})
    if not rows:
        raise CommandError(f"flask sale end: there is no item {item_id}")
    click.echo(f"Item {item_id}: sale window {window(rows[0])}; purchases from now on answer sale_ended.")


@sale_group.command("restock")
@click.argument("item_id", metavar="ID", type=ITEM_ID)
@click.argument("units", metavar="N", type=UNITS)
def sale_restock(item_id, units):
    """Add N units to the sale's stock.

    A worker that has just seen the item sold out keeps answering sold_out for up to
    SOLD_OUT_CACHE_SECONDS before it sells the new units."""
    try:
        with db.connect() as conn:
            if not run(conn, "restock_item", {"item_id": item_id, "units": units}):
                raise CommandError(f"flask sale restock: there is no item {item_id}")
            item = find_item(conn, item_id, "restock")
    except psycopg.errors.NumericValueOutOfRange:
        raise CommandError(f"flask sale restock: item {item_id}'s stock would exceed {MAX_INT}") from None
    cache = db.settings().sold_out_cache
    click.echo(f"Item {item_id}: +{units} units, stock {item['stock']}, remaining {item['remaining']}, "
               f"held {item['held']}. Workers that saw it sold out sell again within {cache:g} s "
               f"(SOLD_OUT_CACHE_SECONDS).")


def export_rows(conn, item_id):
    """The item's purchases as CSV rows, streamed through a server-side cursor in batches."""
    with conn.transaction(), conn.cursor(name=f"export_item_{item_id}") as cursor:
        cursor.itersize = EXPORT_BATCH_ROWS
        cursor.execute(db.query("export_purchases"), {"item_id": item_id})
        for row in cursor:
            yield [row["purchase_id"], row["user_id"], row["quantity"], precise_utc(row["created_at"]),
                   row["status"], row["amount"], row["currency"], row["payment"], row["reference"]]


def write_csv(conn, item_id, out, progress):
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for count, row in enumerate(export_rows(conn, item_id), start=1):
        writer.writerow(row)
        if count % EXPORT_PROGRESS_ROWS == 0:
            progress(f"  {count} purchases written")
    return count


@sale_group.command("export")
@click.argument("item_id", metavar="ID", type=ITEM_ID)
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="the CSV file to write (default: standard output)")
def sale_export(item_id, output):
    """Write the sale's purchases as CSV for fulfilment: purchase_id, user_id, quantity,
    created_at (UTC), status (confirmed, held, cancelled or expired: fulfil the confirmed
    ones), amount and currency owed (minor units), and the latest payment's state and
    reference. Streams: a million rows never sit in memory. The file appears only when
    complete."""
    def progress(line):
        click.echo(line, err=True)

    with db.connect() as conn:
        find_item(conn, item_id, "export")
        if output is None:
            count = write_csv(conn, item_id, sys.stdout, progress)
        else:
            count = write_file(conn, item_id, output, progress)
    progress(f"Exported {count} purchases of item {item_id}" + (f" to {output}" if output else "") + ".")


def write_file(conn, item_id, output, progress):
    """Write to a temporary file beside `output`, renamed over it when complete, so that a failed
    export leaves nothing behind."""
    temporary = output.with_name(f".{output.name}.{os.getpid()}.part")
    try:
        with open(temporary, "x", newline="") as out:
            count = write_csv(conn, item_id, out, progress)
        os.replace(temporary, output)
    except OSError as exc:
        raise CommandError(f"flask sale export: cannot write {output}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return count


@sale_group.command("expire")
def sale_expire():
    """Expire every hold past its expiry now and put its units back on sale: one sweep, as each
    worker's sweeper makes every HOLD_SWEEP_SECONDS. Safe beside them: each hold's units come
    back once."""
    with db.connect() as conn:
        rows = db.expire_holds(conn)
    holds, units = sum(row["holds"] for row in rows), sum(row["units"] for row in rows)
    click.echo(f"Expired {holds} holds of {len(rows)} items: {units} units back on sale.")


def checked_reference(reference, command):
    """--reference without surrounding spaces, or a CommandError naming `command`."""
    reference = reference.strip()
    if not 1 <= len(reference) <= MAX_REFERENCE_LENGTH or not reference.isprintable():
        raise CommandError(f"flask {command}: --reference must be 1 to {MAX_REFERENCE_LENGTH} printable characters")
    return reference


@sale_group.command("confirm")
@click.argument("purchase_id", metavar="PURCHASE_ID", type=click.IntRange(1, db.MAX_BIGINT))
@click.option("--reference", required=True, help="the payment's reference: a bank transfer's, say")
def sale_confirm(purchase_id, reference):
    """Confirm a hold paid outside Stripe (a bank transfer), for the amount it owes.

    Decided as a webhook's payment is (docs/payments.md): a hold still open is confirmed; a
    purchase already paid, cancelled or expired gets the money recorded as owed back. The same
    reference again changes nothing. Exit status 1 when the hold was not confirmed."""
    reference = checked_reference(reference, "sale confirm")
    event = payments.Event(f"manual:{purchase_id}:{reference}", "manual.payment", "payment", purchase_id,
                           None, None, reference)
    with db.connect() as conn:
        row = run(conn, "apply_payment_event", event.params())[0]
    outcome, first = row["outcome"], row["first_outcome"]
    if outcome == "ignored" or first == "ignored":
        raise CommandError(f"flask sale confirm: there is no purchase {purchase_id}")
    if outcome == "duplicate":
        click.echo(f"Purchase {purchase_id}: the payment {reference!r} was recorded before "
                   f"({first or 'the same payment'}); nothing changed.")
        return
    money = payments.display(row["amount"], row["currency"])
    if outcome == "confirmed":
        click.echo(f"Purchase {purchase_id}: confirmed, paid {money} ({reference}).")
        return
    why = {"late": "its hold had expired or was cancelled", "refund_due": "it was paid for already",
           "under_review": "it owes no known amount"}[outcome]
    click.echo(f"Purchase {purchase_id} not confirmed: {why}. The payment {money} is recorded as "
               f"{'under review' if outcome == 'under_review' else 'owed back'} "
               f"(`flask payments {'review' if outcome == 'under_review' else 'refunds'}`).", err=True)
    sys.exit(1)


# --- flask payments ---------------------------------------------------------------------------

@click.group("payments", cls=OneLineGroup)
def payments_group():
    """Money owed back and payments set aside (docs/payments.md)."""


@payments_group.command("refunds")
def payments_refunds():
    """List the money owed back: payments after a hold ended, or for a purchase already paid.
    Refund each in Stripe, then record it with `flask payments refunded`."""
    with db.connect() as conn:
        rows = run(conn, "list_payments", {"payment_status": "refund_due"})
    print_table(["purchase", "buyer", "item", "amount", "reference", "since"],
                [[str(row["purchase_id"]), row["user_id"], str(row["item_id"]),
                  payments.display(row["amount"], row["currency"]), row["reference"], utc(row["received_at"])]
                 for row in rows], right={0, 2, 3})
    click.echo(f"{len(rows)} refunds owed.")


@payments_group.command("review")
def payments_review():
    """List the payments set aside: not the amount or currency the purchase owes. Its hold ran on;
    refund each in Stripe, then record it with `flask payments refunded ID --payment pi_...`."""
    with db.connect() as conn:
        rows = run(conn, "list_payments", {"payment_status": "under_review"})
    print_table(["purchase", "buyer", "item", "paid", "owed", "reference", "since"],
                [[str(row["purchase_id"]), row["user_id"], str(row["item_id"]),
                  payments.display(row["amount"], row["currency"]),
                  payments.display(row["owed"], row["owed_currency"]), row["reference"], utc(row["received_at"])]
                 for row in rows], right={0, 2, 3, 4})
    click.echo(f"{len(rows)} payments under review.")


@payments_group.command("refunded")
@click.argument("purchase_id", metavar="PURCHASE_ID", type=click.IntRange(1, db.MAX_BIGINT))
@click.option("--reference", required=True, help="the refund's id in Stripe (re_...)")
@click.option("--payment", help="the payment refunded (pi_...; default: the oldest owed back, else the "
                                "oldest under review)")
def payments_refunded(purchase_id, reference, payment):
    """Record a refund made in Stripe for money the purchase is owed back, or for a payment set
    aside for review, once."""
    reference = checked_reference(reference, "payments refunded")
    with db.connect() as conn:
        row = run(conn, "record_refund", {"purchase_id": purchase_id, "refund_reference": reference,
                                          "payment_reference": payment})[0]
    money = payments.display(row["amount"], row["currency"])
    if row["outcome"] == "refunded":
        click.echo(f"Purchase {purchase_id}: refund {reference} of {money} (payment {row['reference']}) recorded.")
    elif row["outcome"] == "already_recorded":
        click.echo(f"Purchase {purchase_id}: refund {reference} was recorded before; nothing changed.")
    elif row["outcome"] == "reference_used":
        raise CommandError(f"flask payments refunded: refund {reference} is recorded for another purchase")
    else:
        raise CommandError(f"flask payments refunded: purchase {purchase_id} is owed nothing back")
