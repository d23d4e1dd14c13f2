"""Fixtures: the real PostgreSQL of DATABASE_URL, Flask's test client, and real gunicorn servers."""
import os
import sys
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The tests read no .env: a developer's settings must not change what they test. Every server
# they start inherits this.
os.environ["FLASK_SKIP_DOTENV"] = "1"
if not os.environ.get("DATABASE_URL"):
    pytest.exit("DATABASE_URL is not set: run the tests with `make test`", returncode=2)
try:
    psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=5).close()
except psycopg.Error as exc:
    pytest.exit(f"cannot reach DATABASE_URL: {str(exc).strip().splitlines()[0]}", returncode=2)
# The tests reset the sale all the time: no process may remember an earlier sell-out.
# tests/test_sold_out_cache.py turns the cache on where it tests it.
os.environ["SOLD_OUT_CACHE_SECONDS"] = "0"

# CI replays the same generated examples every run; a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

import app as service  # noqa: E402
import db  # noqa: E402
import reset_db  # noqa: E402
import support  # noqa: E402
from local_server import LocalServer  # noqa: E402


@pytest.fixture
def reset():
    """Recreate the schema; takes reset_db.reset()'s arguments."""
    return reset_db.reset


@pytest.fixture
def conn():
    with db.connect() as connection:
        yield connection


@pytest.fixture
def client(reset):
    reset(stock=100)
    return service.app.test_client()


@pytest.fixture(scope="session")
def server():
    """One gunicorn with four workers for the whole session."""
    running = LocalServer(WEB_CONCURRENCY="4")
    try:
        yield running.wait_ready()
    finally:
        running.stop()


@pytest.fixture
def start_server():
    """Start extra gunicorn servers with their own environment; all are stopped afterwards."""
    started = []

    def start(**env):
        started.append(LocalServer(**env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def stoppable_database():
    """Tests that stop the database's processes run only on the private PostgreSQL of scripts/pg.sh."""
    if not support.private_database():
        pytest.skip("DATABASE_URL is not the private PostgreSQL of scripts/pg.sh")


def pytest_terminal_summary(terminalreporter):
    """The fuzzing figures: how many generated requests were sent, how many got a 5xx."""
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.SENT["requests"]:
        terminalreporter.write_line(
            f"fuzz: {fuzz.SENT['requests']} generated requests, {fuzz.SENT['5xx']} answered 5xx")
