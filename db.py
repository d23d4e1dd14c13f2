"""Database access: settings, the per-process connection pool, the SQL of queries/, retries."""
import itertools
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

QUERIES = Path(__file__).parent / "queries"
APPLICATION_NAME = "flashsale"

# Failures after which the whole transaction may simply run again: nothing of it was committed
# (a UniqueViolation is a purchase decided on a stale snapshot, see buy_ticket.sql), or, after a
# lost connection, the purchase's idempotency key makes the retry find it.
TRANSIENT = (
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.UniqueViolation,
    psycopg.OperationalError,
)


class ConfigError(Exception):
    """The environment holds a setting the service cannot run with."""


class Unavailable(Exception):
    """The database could not answer within the request's retry budget."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    retry_budget: float
    sold_out_cache: float


def number_from_env(name, default, kind, minimum):
    """The environment variable `name` as a number of type `kind`, at least `minimum`."""
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not (value >= minimum and math.isfinite(value)):  # also refuses nan and inf
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def load_settings():
    """Read and check the database settings from the environment."""
    database_url = os.environ.get("DATABASE_URL", "").strip()
    if not database_url:
        raise ConfigError("DATABASE_URL is not set: set it in the environment or in .env")
    return Settings(
        database_url=database_url,
        pool_size=number_from_env("DB_POOL_SIZE", 1, int, 1),
        max_overflow=number_from_env("DB_MAX_OVERFLOW", 0, int, 0),
        pool_timeout=number_from_env("DB_POOL_TIMEOUT", 0.25, float, 0.01),
        retry_budget=number_from_env("DB_RETRY_BUDGET_SECONDS", 3.0, float, 0.01),
        sold_out_cache=number_from_env("SOLD_OUT_CACHE_SECONDS", 0.5, float, 0.0),
    )


@cache
def query(name):
    """The text of queries/<name>.sql."""
    return (QUERIES / f"{name}.sql").read_text()


def connect(database_url=None):
    """A single autocommit connection, for scripts and tests."""
    return psycopg.connect(
        database_url or load_settings().database_url,
        autocommit=True, row_factory=dict_row, connect_timeout=10,
    )


_settings = None
_pool = None


def open_pool():
    """Open this process's pool. Call it after forking: a pool never crosses a fork."""
    global _settings, _pool
    if _pool is None:
        _settings = load_settings()
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
            },
            name=f"{APPLICATION_NAME}-{os.getpid()}",
            open=True,
        )
    return _pool


def close_pool():
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


def _transaction(conn, seconds_left, name, params):
    """Run the statement of queries/<name>.sql in a transaction of its own; return its rows.

    The rows are made into dicts after COMMIT, which releases the row locks. Every connection
    starts with the whole budget as its statement_timeout; a retry, with less left, lowers it
    for its own transaction."""
    with conn.transaction():
        if seconds_left < _settings.retry_budget - 0.01:
            milliseconds = max(1, int(seconds_left * 1000))
            conn.execute(query("set_statement_timeout"), {"milliseconds": milliseconds})
        cursor = conn.execute(query(name), params)
    return cursor.fetchall()


# time.monotonic() until which this process answers 503 at once: a moment ago no connection to
# the database could be had, and waiting on the pool again would only queue the buyers behind it.
UNREACHABLE_HOLD_SECONDS = 0.5
_unreachable_until = 0.0


def _run(name, params):
    """Run one statement in a transaction, retrying transient failures with backoff until the
    budget is spent."""
    global _unreachable_until
    if time.monotonic() < _unreachable_until:
        raise Unavailable("the database was unreachable a moment ago")
    pool = open_pool()
    deadline = time.monotonic() + _settings.retry_budget
    for attempt in itertools.count():
        seconds_left = deadline - time.monotonic()
        try:
            with pool.connection(timeout=min(_settings.pool_timeout, seconds_left)) as conn:
                return _transaction(conn, deadline - time.monotonic(), name, params)
        except PoolTimeout as exc:
            _unreachable_until = time.monotonic() + UNREACHABLE_HOLD_SECONDS
            raise Unavailable(str(exc)) from exc
        except errors.QueryCanceled as exc:
            raise Unavailable(str(exc)) from exc
        except TRANSIENT as exc:
            pause = random.uniform(0, min(1.0, 0.02 * 2**attempt))  # full jitter
            if time.monotonic() + pause >= deadline:
                raise Unavailable(str(exc)) from exc
            time.sleep(pause)


# Item id -> time.monotonic() until which this process answers sold_out without asking the
# database. Set only when the database said that nothing is left; stock never comes back, except
# when the sale is seeded again, which this process sees once the entry expires.
_sold_out_until = {}


def buy_ticket(item_id, user_id, quantity, idempotency_key=None):
    """Try to sell `quantity` units of an item to a user: the row of buy_ticket.sql.

    A request without an Idempotency-Key gets a key of its own, so that a retry after a
    connection lost mid-COMMIT finds the purchase instead of selling twice. A request with
    one always asks the database, which may hold the purchase to replay."""
    if idempotency_key is None and _sold_out_until.get(item_id, 0) > time.monotonic():
        return {"outcome": "sold_out", "remaining": 0}
    params = {
        "item_id": item_id,
        "user_id": user_id,
        "quantity": quantity,
        "idempotency_key": idempotency_key or str(uuid.uuid4()),
    }
    row = _run("buy_ticket", params)[0]
    if row["outcome"] in ("sold", "sold_out") and row["remaining"] == 0 and _settings.sold_out_cache:
        _sold_out_until[item_id] = time.monotonic() + _settings.sold_out_cache
    return row


def get_item(item_id):
    """The item's row of get_item.sql, or None."""
    rows = _run("get_item", {"item_id": item_id})
    return rows[0] if rows else None


def ping(timeout=1.0):
    """True when the database answers within `timeout` seconds."""
    try:
        with open_pool().connection(timeout=timeout) as conn:
            with conn.transaction(), conn.pipeline():
                conn.execute(query("set_statement_timeout"), {"milliseconds": int(timeout * 1000)})
                conn.execute(query("ping"))
        return True
    except psycopg.Error:
        return False
