"""Every setting of the service and its scripts, read once from the environment and `.env`.

Variables set in the environment win over `.env`. `FLASK_SKIP_DOTENV=1` (Flask's own switch)
leaves `.env` unread: the tests set it, so that a developer's `.env` cannot change what they test.
Run `python settings.py` to check the configuration: it prints one line and exits 2 if it is bad.
"""
import math
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

ENV_FILE = Path(__file__).parent / ".env"
BUY_PATH = "/buy_ticket"


class ConfigError(Exception):
    """A setting the service cannot run with; its message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    api_url: str  # the service's base URL, without /buy_ticket
    bind: str  # where gunicorn listens: BIND, else API_URL's host and port
    web_concurrency: int
    pool_size: int
    max_overflow: int
    pool_timeout: float
    retry_budget: float
    sold_out_cache: float
    total_requests: int
    concurrent_processes: int
    # Client-side deadline on every database wait (docs/deadline.md).
    client_deadline: bool


def environment():
    """The process environment over the values of `.env`."""
    if os.environ.get("FLASK_SKIP_DOTENV", "").lower() in ("1", "true", "yes"):
        return dict(os.environ)
    return {**dotenv_values(ENV_FILE), **os.environ}


def number(environ, name, default, kind, minimum):
    """The variable `name` as a number of type `kind`, at least `minimum`."""
    raw = (environ.get(name) or "").strip() or str(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not (value >= minimum and math.isfinite(value)):  # also refuses nan and inf
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def switch(environ, name, default):
    """The variable `name` as on (1, true, yes, on) or off (0, false, no, off)."""
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {environ.get(name)!r}")


def base_url(raw):
    """API_URL as the service's base URL. The original project's `.env` named the endpoint
    itself (`http://localhost:8000/buy_ticket`); both forms mean the same service."""
    parts = urlsplit(raw.strip())
    path = parts.path.rstrip("/")
    if path.endswith(BUY_PATH):
        path = path[: -len(BUY_PATH)]
    if parts.scheme not in ("http", "https") or not parts.hostname or path or parts.query:
        raise ConfigError(f"API_URL must be the service's base URL (http://host:port) or its "
                          f"{BUY_PATH} URL, got {raw!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"API_URL has a bad port: {raw!r}") from None
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def from_environ(environ):
    """Settings from a mapping of variables; raises ConfigError on the first bad one."""
    database_url = (environ.get("DATABASE_URL") or "").strip()
    if not database_url:
        raise ConfigError("DATABASE_URL is not set: set it in the environment or in .env")
    api_url = base_url(environ.get("API_URL") or "http://127.0.0.1:8000")
    api = urlsplit(api_url)
    return Settings(
        database_url=database_url,
        api_url=api_url,
        bind=(environ.get("BIND") or "").strip() or f"{api.hostname}:{api.port or 80}",
        web_concurrency=number(environ, "WEB_CONCURRENCY", 3, int, 1),
        pool_size=number(environ, "DB_POOL_SIZE", 1, int, 1),
        max_overflow=number(environ, "DB_MAX_OVERFLOW", 0, int, 0),
        pool_timeout=number(environ, "DB_POOL_TIMEOUT", 0.25, float, 0.01),
        retry_budget=number(environ, "DB_RETRY_BUDGET_SECONDS", 3.0, float, 0.01),
        sold_out_cache=number(environ, "SOLD_OUT_CACHE_SECONDS", 0.5, float, 0.0),
        total_requests=number(environ, "TOTAL_REQUESTS", 1000, int, 1),
        concurrent_processes=number(environ, "CONCURRENT_PROCESSES", 50, int, 1),
        # Client-side deadline on every database wait (docs/deadline.md).
        client_deadline=switch(environ, "DB_CLIENT_DEADLINE", True),
    )


@cache
def load():
    """This process's settings, read once. A gunicorn worker inherits its master's."""
    return from_environ(environment())


def load_or_exit():
    """The settings, or exit with one line saying what is wrong: for scripts and gunicorn."""
    try:
        return load()
    except ConfigError as exc:
        sys.exit(f"Invalid configuration: {exc}")


if __name__ == "__main__":
    try:
        load()
    except ConfigError as exc:
        print(f"Invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
