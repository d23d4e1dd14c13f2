"""Fixtures: the real PostgreSQL of DATABASE_URL, Flask's test client, and real gunicorn servers."""
import dataclasses
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

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
# Nor may a server's sweeper expire the holds a test has moved past their expiry before the test
# looks: the tests of the sweeper, the proof and the chaos runs turn it on where they need it.
os.environ["HOLD_SWEEP_SECONDS"] = "0"

# CI replays the same generated examples every run; a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

import db  # noqa: E402
import reset_db  # noqa: E402
import support  # noqa: E402
from deploy import nginx  # noqa: E402
from deploy.local_server import LocalServer  # noqa: E402
from flashsale import create_app, schema  # noqa: E402
from flashsale import settings as configuration  # noqa: E402
from support import TOKEN_SECRET, StandInUpstream  # noqa: E402

db.configure(configuration.load())  # the test settings: this environment's, without .env


@pytest.fixture(scope="session", autouse=True)
def schema_up_to_date():
    """gunicorn refuses a database whose schema is older than the code: upgrade the test
    database before any server starts."""
    with db.connect() as connection:
        schema.upgrade(connection)


@pytest.fixture
def reset():
    """Recreate the schema; takes reset_db.reset()'s arguments."""
    return reset_db.reset


@pytest.fixture
def conn():
    with db.connect() as connection:
        yield connection


@pytest.fixture(scope="session")
def app():
    """The app as the Flask tutorial's tests make it: create_app() with the test settings (open
    mode)."""
    return create_app(configuration.load())


@pytest.fixture
def client(reset, app):
    reset(stock=100)
    return app.test_client()


@pytest.fixture(scope="session")
def server():
    """One gunicorn with four workers for the whole session."""
    with LocalServer(WEB_CONCURRENCY="4") as running:
        yield running


@pytest.fixture(scope="session")
def verified_app():
    """The app in verified mode: HS256 tokens signed with support.TOKEN_SECRET."""
    verified = configuration.auth_settings({"AUTH_JWT_SECRET": TOKEN_SECRET})
    return create_app(dataclasses.replace(configuration.load(), **verified))


@pytest.fixture
def verified_client(reset, verified_app):
    reset(stock=100)
    return verified_app.test_client()


@pytest.fixture(scope="session")
def verified_server():
    """One gunicorn in verified mode, with two workers, for the whole session."""
    with LocalServer(WEB_CONCURRENCY="2", AUTH_JWT_SECRET=TOKEN_SECRET) as running:
        yield running


@contextmanager
def stopped_afterwards(make, ready=lambda thing: thing):
    """A function that makes things (servers, upstreams) with `make`, then readies them; each one
    made is stopped when the block ends, one that never got ready too."""
    started = []

    def start(*args, **kwargs):
        started.append(make(*args, **kwargs))
        return ready(started[-1])

    try:
        yield start
    finally:
        for thing in started:
            thing.stop()


@pytest.fixture
def start_server():
    """Start extra gunicorn servers with their own environment; all are stopped afterwards."""
    with stopped_afterwards(LocalServer) as start:
        yield start


@pytest.fixture
def start_proxied():
    """Start gunicorn servers behind nginx, with their own environment, and wait until they are
    ready; all are stopped afterwards."""
    with stopped_afterwards(nginx.GunicornBehindNginx, lambda server: server.wait_ready()) as start:
        yield start


@pytest.fixture
def nginx_folder():
    """A folder for one nginx and its stand-in upstreams' sockets, removed afterwards."""
    folder = nginx.make_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def start_nginx(nginx_folder):
    """Start nginx in nginx_folder in front of these upstreams; stopped afterwards."""
    with stopped_afterwards(lambda upstreams, **options: nginx.Nginx(upstreams, folder=nginx_folder, **options),
                            lambda proxy: proxy.wait_listening()) as start:
        yield start


@pytest.fixture
def stand_in(nginx_folder):
    """Start stand-in upstreams on unix sockets in nginx_folder; closed afterwards."""
    with stopped_afterwards(lambda name, dying=False: StandInUpstream(nginx_folder / f"{name}.sock", dying)) as start:
        yield start


@pytest.fixture
def stoppable_database():
    """Tests that stop the database's processes run only on the private PostgreSQL of deploy/pg.sh."""
    if not support.private_database():
        pytest.skip("DATABASE_URL is not the private PostgreSQL of deploy/pg.sh")


def pytest_terminal_summary(terminalreporter):
    """The fuzzing figures: how many generated requests and tokens were sent, how many got a 5xx."""
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.SENT["requests"]:
        terminalreporter.write_line(
            f"fuzz: {fuzz.SENT['requests']} generated requests, {fuzz.SENT['5xx']} answered 5xx")
    behind_nginx = sys.modules.get("test_nginx")
    if behind_nginx is not None and behind_nginx.FIGURES:
        terminalreporter.write_line(f"nginx: {behind_nginx.FIGURES['slowloris']}")
    checker = sys.modules.get("test_history")
    if checker is not None and checker.FIGURES["faulty histories"]:
        figures = checker.FIGURES
        terminalreporter.write_line(
            f"history: {figures['faulty histories']} faulty generated histories, {figures['rejected by the search']} "
            f"not explained by the brute-force search, {figures['rejected by both']} of them rejected by the checker")
    tokens = sys.modules.get("test_auth_fuzz")
    if tokens is not None and tokens.SENT["tokens"]:
        terminalreporter.write_line(
            f"token fuzz: {tokens.SENT['tokens']} generated tokens, {tokens.SENT['5xx']} answered 5xx")
    webhooks = sys.modules.get("test_payments_fuzz")
    if webhooks is not None and webhooks.SENT["deliveries"]:
        terminalreporter.write_line(f"webhook fuzz: {webhooks.SENT['deliveries']} generated deliveries, "
                                    f"{webhooks.SENT['5xx']} answered 5xx")
