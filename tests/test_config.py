"""Invalid configuration stops start-up with one clear message; scripts fail loudly."""
import os
import shutil
import subprocess
import sys

import pytest

import db
from verify import proof
from flashsale import settings as configuration
from conftest import ROOT
from support import run


@pytest.mark.parametrize("name, value, message", [
    ("DB_POOL_SIZE", "abc", "DB_POOL_SIZE must be a whole number, got 'abc'"),
    ("DB_POOL_SIZE", "-1", "DB_POOL_SIZE must be at least 1, got '-1'"),
    ("DB_MAX_OVERFLOW", "-2", "DB_MAX_OVERFLOW must be at least 0"),
    ("DB_POOL_TIMEOUT", "soon", "DB_POOL_TIMEOUT must be a number"),
    ("DB_RETRY_BUDGET_SECONDS", "nan", "DB_RETRY_BUDGET_SECONDS must be at least"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1"),
    ("DATABASE_URL", "", "DATABASE_URL is not set"),
    ("API_URL", "http://localhost:8000/api", "API_URL must be the service's base URL"),
    ("API_URL", "localhost:8000", "API_URL must be the service's base URL"),
    ("METRICS", "maybe", "METRICS must be 1 or 0 (on or off), got 'maybe'"),
    ("ACCESS_LOG", "2", "ACCESS_LOG must be 1 or 0"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json, got 'xml'"),
    ("METRICS_ALLOW", "127.0.0.1,localhost", "METRICS_ALLOW must be a comma-separated list"),
    ("METRICS_ALLOW", "10.0.0.0/33", "METRICS_ALLOW must be a comma-separated list"),
])
def test_gunicorn_refuses_a_bad_setting(name, value, message):
    result = run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"],
                 **{name: value})
    assert result.returncode != 0
    assert f"Invalid configuration: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_reset_db_fails_loudly_when_the_database_is_unreachable():
    result = run([sys.executable, "reset_db.py"], DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "reset_db: cannot reset the database" in result.stderr


def test_reset_db_prints_what_it_did(conn):
    result = run([sys.executable, "reset_db.py", "--stock", "7", "--items", "3", "--max-per-user", "2", "--yes"])
    assert result.returncode == 0, result.stderr
    assert "3 item(s) with 7 units each, at most 2 per user" in result.stdout
    rows = conn.execute("SELECT id, stock, remaining, max_per_user FROM items ORDER BY id").fetchall()
    assert [tuple(row.values()) for row in rows] == [(1, 7, 7, 2), (2, 7, 7, 2), (3, 7, 7, 2)]


def test_dotenv_is_read_without_overriding_the_environment(tmp_path):
    (tmp_path / "flashsale").mkdir()
    shutil.copy(ROOT / "flashsale" / "settings.py", tmp_path / "flashsale")
    (tmp_path / ".env").write_text("DB_POOL_TIMEOUT=9\nWEB_CONCURRENCY=77\nDATABASE_URL=postgresql:///x\n")
    code = "from flashsale import settings; s = settings.load(); print(s.pool_timeout, s.web_concurrency)"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("FLASK_SKIP_DOTENV", "WEB_CONCURRENCY")}
    read = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**environment, "DB_POOL_TIMEOUT": "2"}, timeout=60)
    assert read.stdout.split() == ["2.0", "77"], read.stderr
    skipped = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             env={**environment, "FLASK_SKIP_DOTENV": "1"}, timeout=60)
    assert skipped.stdout.split() == ["0.25", "3"], skipped.stderr


@pytest.mark.parametrize("api_url", ["http://127.0.0.1:8000", "http://127.0.0.1:8000/",
                                     "http://127.0.0.1:8000/buy_ticket", "http://127.0.0.1:8000/buy_ticket/"])
def test_api_url_may_name_the_service_or_its_endpoint(api_url):
    loaded = configuration.from_environ({"DATABASE_URL": "postgresql:///x", "API_URL": api_url})
    assert loaded.api_url == "http://127.0.0.1:8000" and loaded.bind == "127.0.0.1:8000"


def test_the_proof_accepts_the_endpoint_url_and_refuses_a_bad_one():
    options = proof.parse_options(["--database-url", "x", "--url", "http://localhost:8000/buy_ticket"])
    assert options.url == "http://localhost:8000"
    result = run([sys.executable, "proof_of_correctness.py", "--url", "http://localhost:8000/shop"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--url must be the service's base URL" in result.stderr.strip().splitlines()[-1]


def test_settings_check_prints_one_line_and_exits_2():
    result = run([sys.executable, "-m", "flashsale.settings"], DB_POOL_SIZE="abc")
    assert result.returncode == 2
    assert result.stderr == "Invalid configuration: DB_POOL_SIZE must be a whole number, got 'abc'\n"


def test_serving_a_command_stops_at_once_on_a_bad_setting():
    """`make run`'s runner says what is wrong first, without waiting for a server to come up."""
    result = run([sys.executable, "-m", "deploy.local_server", "true"], DB_POOL_SIZE="abc")
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == "Invalid configuration: DB_POOL_SIZE must be a whole number, got 'abc'"


def test_pools_larger_than_the_database_allows_are_warned_of(start_server, conn):
    available = conn.execute(db.query("available_connections")).fetchone()["available"]
    server = start_server(WEB_CONCURRENCY="2", DB_POOL_SIZE="1", DB_MAX_OVERFLOW=str(available))
    server.wait_ready()
    assert f"more than the {available} the database allows" in server.output()


def test_tests_stop_at_once_when_the_database_is_unreachable():
    result = run([sys.executable, "-m", "pytest", "tests/test_api.py"],
                 DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode != 0
    assert "cannot reach DATABASE_URL" in result.stdout + result.stderr
    assert len((result.stdout + result.stderr).splitlines()) < 10
