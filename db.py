"""Database access: the per-process connection pool, the SQL of queries/, transactions, retries.

The ground floor: it imports nothing of this project. The app or a script hands it its settings
with configure() (the app through init_app()), and a `report` function to tell what it counts."""
import itertools
import os
import random
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

QUERIES = Path(__file__).parent / "queries"
APPLICATION_NAME = "flashsale"
MAX_INT = 2**31 - 1  # PostgreSQL integer: items.id, stock, quantities
MAX_BIGINT = 2**63 - 1  # PostgreSQL bigint: purchases.id
READY_TIMEOUT_SECONDS = 1.0
FIRST_CONNECTION_WAIT_SECONDS = 5
# A connection attempt (the pool's are in its background threads, never in a request) waits this
# long for the server, unless DATABASE_URL says otherwise: long enough that an attempt in flight
# while the server is frozen completes as soon as it thaws, short enough that the pool tries again
# within seconds. A URL listing several hosts may want less, to move on to the next host sooner.
CONNECT_TIMEOUT_SECONDS = 10
# A TCP peer that vanished (power lost, partition): an idle pooled connection is found dead after
# about 5 + 3 x 1 s without an answer to keepalives, and data sent to it is given up on after 5 s,
# instead of the kernel's minutes. Both are ignored on a unix socket.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3,
             "tcp_user_timeout": 5000}
# psycopg_pool retries a failed connection attempt after 1 s, doubling the pause each time until
# reconnect_timeout has passed since the first failure (default 5 minutes: attempts 1, 3, 7, 15,
# 31... s after it). With half a second the series ends after one more attempt and the pool lets
# the slot go; the next request that finds the pool empty starts a new attempt at once. So while
# the primary fails over, each busy worker tries again every second or less, and reaches the new
# primary right after its promotion, not up to half a minute later.
RECONNECT_TIMEOUT_SECONDS = 0.5
# Full-jitter backoff between attempts: a pause drawn from [0, min(cap, first * 2**attempt)].
BACKOFF_FIRST_SECONDS = 0.02
BACKOFF_CAP_SECONDS = 1.0

# Failures after which the whole transaction may simply run again: nothing of it was committed
# (a UniqueViolation is a purchase decided on a stale snapshot, see buy_ticket.sql), or, after a
# lost connection, the purchase's idempotency key makes the retry find it.
TRANSIENT = (
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.UniqueViolation,
    psycopg.OperationalError,
)


class Unavailable(Exception):
    """The database could not answer within the request's retry budget. `outcome_unknown`: a
    COMMIT was cut off and no later attempt found out whether it took effect."""

    def __init__(self, message, outcome_unknown=False):
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class DeadlinePassed(psycopg.OperationalError):
    """The request's deadline passed while waiting on the database; the connection was closed."""


class CommitCutOff(psycopg.OperationalError):
    """The connection was lost while COMMIT was in flight: the transaction may have committed."""


# time.monotonic() by which the request this thread serves must be done with the database, or
# None: no deadline (the pool's background threads, scripts).
_deadline = ContextVar("deadline", default=None)


@contextmanager
def waits_end_by(moment):
    """Every wait on the database in this block ends by time.monotonic() `moment`, whatever the
    server does (see DeadlineConnection)."""
    token = _deadline.set(moment)
    try:
        yield
    finally:
        _deadline.reset(token)


class PooledConnection(psycopg.Connection):
    """The pool's connections. Each keeps one cursor for the statements of _transaction: a cursor
    made per statement (its adapters and transformer) cost a large share of the instructions
    psycopg and db.py spend on a purchase (docs/performance.md, Variants tried)."""

    _statement_cursor = None

    def statement_cursor(self):
        """The connection's cursor for _transaction, with rows as tuples (see there)."""
        if self._statement_cursor is None:
            self._statement_cursor = self.cursor(row_factory=tuple_row)
        return self._statement_cursor


class DeadlineConnection(PooledConnection):
    """A connection on which no wait outlasts the deadline of the request being served.

    statement_timeout is enforced by the server, so a server that stops answering (frozen,
    partitioned, powered off, with the socket left open) would hold the worker forever. Every
    wait of a psycopg connection on its socket (BEGIN, each statement, COMMIT, ROLLBACK, the
    pool's check) goes through Connection.wait(), whose `timeout` psycopg itself uses to bound
    its cancel wait; here it is the time left. When it runs out the connection is abandoned, as
    psycopg does with one it cannot cancel: its state is unknown, so it is closed (no ROLLBACK is
    attempted on a closed connection) and the pool replaces it."""

    def wait(self, gen, interval=0.1, timeout=None):  # psycopg's default interval
        deadline = _deadline.get()
        if deadline is None:
            return super().wait(gen, interval, timeout)
        left = deadline - time.monotonic()
        try:
            return super().wait(gen, interval, left if timeout is None else min(timeout, left))
        except errors._WaitTimeout:
            if time.monotonic() < deadline:
                raise  # a shorter timeout of the caller's own
            self.pgconn.finish()
            raise DeadlinePassed("no answer from the database before the request's deadline") from None


# psycopg caches its conversion of a statement's placeholders only for statements up to this
# long (MAX_CACHED_STATEMENT_LENGTH in psycopg 3.3); tests/test_hot_path.py keeps every one within.
QUERY_CACHE_BYTES = 4096


@cache
def query(name, folder=QUERIES):
    """The statement of <folder>/<name>.sql as it is sent: without the comment lines and the
    indentation, which are for the reader and would take buy_ticket.sql past QUERY_CACHE_BYTES."""
    lines = (Path(folder) / f"{name}.sql").read_text().splitlines()
    return "\n".join(line.strip() for line in lines if not line.lstrip().startswith("--"))


def connect(database_url=None):
    """A single autocommit connection, for scripts and tests: to `database_url`, else to the
    configured database."""
    database_url = database_url or settings().database_url
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row, **connect_timeout(database_url))


def connect_timeout(database_url):
    """CONNECT_TIMEOUT_SECONDS as a connection argument, unless the URL sets its own."""
    return {} if "connect_timeout" in conninfo_to_dict(database_url) else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


_settings = None  # set by configure()
_pool = None


def ignore(event, detail=None):
    pass


# Told what db.py counts: report("unavailable", reason), report("retry", exception),
# report("sold_out_cache_hit"). The app hands it its metrics.
report = ignore


def configure(settings, reporter=ignore):
    """Use these settings from now on: an object with database_url, pool_size, max_overflow,
    pool_timeout, retry_budget, client_deadline and sold_out_cache (the app's Settings). A pool
    opened under other settings is closed."""
    global _settings, report
    report = reporter
    if settings is not _settings:
        close_pool()
        _settings = settings


def init_app(app, reporter=ignore):
    """Configure with the app's settings, as the Flask tutorial's db.init_app does."""
    configure(app.config["SETTINGS"], reporter)


def settings():
    """The settings configure() was given."""
    if _settings is None:
        raise RuntimeError("db.configure() was not called: the app or script must configure db first")
    return _settings


def open_pool():
    """Open this process's pool. Call it after forking: a pool never crosses a fork."""
    global _pool
    settings()
    if _pool is None:
        _pool = ConnectionPool(
            _settings.database_url,
            min_size=_settings.pool_size,
            max_size=_settings.pool_size + _settings.max_overflow,
            timeout=_settings.pool_timeout,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": APPLICATION_NAME,
                "prepare_threshold": 0,  # prepare every statement at its first use
                "options": f"-c statement_timeout={int(_settings.retry_budget * 1000)}",
                **connect_timeout(_settings.database_url),
                **KEEPALIVE,
            },
            connection_class=DeadlineConnection if _settings.client_deadline else PooledConnection,
            name=f"{APPLICATION_NAME}-{os.getpid()}",
            # No check= on checkout: it costs every request a round trip (docs/performance.md).
            # A connection that broke while idle (the primary failed over or
            # restarted) fails its transaction instead; the pool discards it and _run retries.
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
            open=True,
        )
    return _pool


def close_pool():
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


# A statement that serves only some purchases answers this outcome for the others, having
# changed nothing but locked the item's row; the same transaction then runs the statement named
# here. The choice is checked under the lock: a stale one costs a statement, never a wrong sale.
SERVED_ELSEWHERE = {
    "buy_ticket": (b"payment_window", "buy_held_ticket"),
    "buy_held_ticket": (b"holds_due", "buy_ticket_expiring_holds"),
}


def _transaction(conn, attempt, seconds_left, name, params):
    """Run the statement of queries/<name>.sql in a transaction of its own; return its rows as dicts.

    Between the statement's result and COMMIT the item's row lock is held, so psycopg makes
    nothing of the result there but tuples; the dicts (their keys read from the result) are made
    after COMMIT. Every connection starts with the whole budget as its statement_timeout; a
    retry, with less left, lowers it for its own transaction. A connection lost during COMMIT
    raises CommitCutOff: the server may have committed, and only the idempotency key can tell."""
    committing = False
    cursor = conn.statement_cursor()
    try:
        with conn.transaction():
            if attempt > 0:
                milliseconds = max(1, int(seconds_left * 1000))
                cursor.execute(query("set_statement_timeout"), {"milliseconds": milliseconds})
            cursor.execute(query(name), params)
            while name in SERVED_ELSEWHERE and cursor.pgresult.get_value(0, 0) == SERVED_ELSEWHERE[name][0]:
                name = SERVED_ELSEWHERE[name][1]  # the outcome is the first column, as text
                cursor.execute(query(name), params)
            committing = True
    except psycopg.OperationalError as exc:
        # The server reports a rollback (serialization failure, deadlock) as such; any other
        # failure during COMMIT leaves the outcome unknown.
        if committing and not isinstance(exc, errors.TransactionRollback):
            raise CommitCutOff(str(exc)) from exc
        raise
    as_dict = dict_row(cursor)
    return [as_dict(row) for row in cursor.fetchall()]


# time.monotonic() until which this process answers 503 at once: a moment ago no connection to
# the database could be had, and waiting on the pool again would only queue the buyers behind it.
UNREACHABLE_HOLD_SECONDS = 0.5
_unreachable_until = 0.0


def _run(name, params):
    """Run one statement in a transaction, retrying transient failures with backoff until the
    budget is spent. The budget is also the client-side deadline of every wait on the database."""
    global _unreachable_until
    if time.monotonic() < _unreachable_until:
        report("unavailable", "database_unreachable")
        raise Unavailable("the database was unreachable a moment ago")
    pool = open_pool()
    deadline = time.monotonic() + _settings.retry_budget
    outcome_unknown = False  # a COMMIT was cut off and no later attempt resolved it
    with waits_end_by(deadline):
        for attempt in itertools.count():
            seconds_left = deadline - time.monotonic()
            try:
                # getconn() and putconn() rather than pool.connection(), whose `with conn:` would
                # only COMMIT nothing again (_transaction has ended the transaction), a share of
                # the instructions psycopg and db.py spend on a purchase. putconn() rolls back or
                # replaces a connection left in a transaction or broken, as connection() does.
                conn = pool.getconn(timeout=min(_settings.pool_timeout, seconds_left))
                try:
                    return _transaction(conn, attempt, deadline - time.monotonic(), name, params)
                finally:
                    pool.putconn(conn)
            except PoolTimeout as exc:
                _unreachable_until = time.monotonic() + UNREACHABLE_HOLD_SECONDS
                report("unavailable", "pool_timeout")
                raise Unavailable(str(exc), outcome_unknown) from exc
            except errors.QueryCanceled as exc:
                report("unavailable", "statement_timeout")
                raise Unavailable(str(exc), outcome_unknown) from exc
            except TRANSIENT as exc:
                # A cut-off COMMIT is retried like a lost connection: the same idempotency key
                # makes the retry find the purchase or make it, never twice.
                outcome_unknown = outcome_unknown or isinstance(exc, CommitCutOff)
                pause = random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_FIRST_SECONDS * 2**attempt))
                if time.monotonic() + pause >= deadline:
                    report("unavailable", "deadline_passed" if isinstance(exc, DeadlinePassed) else "retries_exhausted")
                    raise Unavailable(str(exc), outcome_unknown) from exc
                report("retry", exc)
                time.sleep(pause)


# Item id -> time.monotonic() until which this process answers sold_out without asking the
# database. Set only when the database said that nothing is left, until the first hold open then
# would expire; stock comes back otherwise only by `flask sale restock`, a cancelled hold or a
# re-seeded sale, which this process sees once the entry expires.
_sold_out_until = {}

# Item id -> the purchase statement its next purchase runs first in this process, by what the
# last one found: buy_held_ticket.sql for an item with a payment window, or
# buy_ticket_expiring_holds.sql while its purchases find holds due; buy_ticket.sql otherwise
# (no entry). Each does less behind the item's lock than the next (docs/performance.md).
_statements = {}


def buy_ticket(item_id, user_id, quantity, idempotency_key=None):
    """Try to sell `quantity` units of an item to a user: the row of buy_ticket.sql.

    A request without an Idempotency-Key gets a key of its own, so that a retry after a
    connection lost mid-COMMIT finds the purchase instead of selling twice. A request with
    one always asks the database, which may hold the purchase to replay."""
    if idempotency_key is None and _sold_out_until.get(item_id, 0) > time.monotonic():
        report("sold_out_cache_hit")
        return {"outcome": "sold_out", "remaining": 0, "expired": 0, "released": 0}
    params = {
        "item_id": item_id,
        "user_id": user_id,
        "quantity": quantity,
        "idempotency_key": idempotency_key or str(uuid.uuid4()),
    }
    row = _run(_statements.get(item_id, "buy_ticket"), params)[0]
    if not row["payment_window"]:
        _statements.pop(item_id, None)
    else:
        _statements[item_id] = "buy_ticket_expiring_holds" if row["expired"] else "buy_held_ticket"
    if row["outcome"] in ("sold", "sold_out") and row["remaining"] == 0 and _settings.sold_out_cache:
        units_return_in = row["units_return_in"]
        seconds = _settings.sold_out_cache if units_return_in is None else min(_settings.sold_out_cache,
                                                                               float(units_return_in))
        _sold_out_until[item_id] = time.monotonic() + seconds
    return row


def cancel_purchase(user_id, purchase_id):
    """Cancel the user's hold and return its units: the row of cancel_purchase.sql."""
    return _run("cancel_purchase", {"user_id": user_id, "purchase_id": purchase_id})[0]


def apply_payment_event(params):
    """Apply one payment event once, under the purchase's row lock: the row of
    apply_payment_event.sql (payments.Event.params())."""
    return _run("apply_payment_event", params)[0]


def payment_totals():
    """Rows of payment_totals.sql: money per item, currency and payment state."""
    return _run("payment_totals", {})


def expire_holds(conn):
    """One sweep on `conn`: expire every hold past its expiry, return its units. Rows of
    expire_holds.sql, one per item that got units back."""
    with conn.transaction():
        return conn.execute(query("expire_holds")).fetchall()


# The sweeper borrows its worker's pooled connection only when one is idle: a busy worker's
# sweep is skipped rather than counted as a buyer's wait or timeout.
SWEEP_POOL_WAIT_SECONDS = 0.01


def sweep_holds():
    """One sweep on this process's pool, within the retry budget; None when the pool had no idle
    connection or the database did not answer (the next sweep tries again)."""
    pool = open_pool()
    if not pool.get_stats().get("pool_available"):
        return None
    try:
        with (waits_end_by(time.monotonic() + _settings.retry_budget),
              pool.connection(timeout=SWEEP_POOL_WAIT_SECONDS) as conn):
            return expire_holds(conn)
    except (PoolTimeout, psycopg.Error):
        return None


def get_item(item_id):
    """The item's row of get_item.sql, or None."""
    rows = _run("get_item", {"item_id": item_id})
    return rows[0] if rows else None


def buyer_purchases(user_id, after, limit):
    """The buyer's purchases older than purchase id `after` (all when None), newest first."""
    return _run("buyer_purchases", {"user_id": user_id, "after": after, "limit": limit})


def buyer_purchase(user_id, purchase_id):
    """The purchase if it is the buyer's, else None."""
    rows = _run("buyer_purchase", {"user_id": user_id, "purchase_id": purchase_id})
    return rows[0] if rows else None


def list_items(after, limit):
    """Rows of list_items.sql: up to `limit` items with ids above `after`, each with its state."""
    return _run("list_items", {"after": after, "limit": limit})


def units_held():
    """{item id: units held by holds open now}, for the items that have any."""
    return {row["item_id"]: row["units"] for row in _run("units_held", {})}


def pop_pool_stats():
    """psycopg_pool's figures, its counters since the last call; None before the pool opens."""
    return _pool.pop_stats() if _pool is not None else None


def ping(timeout=READY_TIMEOUT_SECONDS):
    """How the database keeps an acknowledged commit, 'synchronous' (on a standby too) or 'async'
    (see replication.sql), when it answers within `timeout` seconds, the pool's wait included;
    else None."""
    try:
        with waits_end_by(time.monotonic() + timeout), open_pool().connection(timeout=timeout) as conn:
            with conn.transaction(), conn.pipeline():
                conn.execute(query("set_statement_timeout"), {"milliseconds": int(timeout * 1000)})
                cursor = conn.execute(query("replication"))
        return cursor.fetchone()["replication"]
    except psycopg.Error:
        return None


def available_connections():
    """How many connections the database lets the service open."""
    with connect() as conn, conn.transaction():
        return conn.execute(query("available_connections")).fetchone()["available"]
