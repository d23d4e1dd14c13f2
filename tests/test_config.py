"""Invalid configuration stops start-up with one clear message; scripts fail loudly."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def run(command, **env):
    environment = {**os.environ, **env}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, value, message", [
    ("DB_POOL_SIZE", "abc", "DB_POOL_SIZE must be a number, got 'abc'"),
    ("DB_POOL_SIZE", "-1", "DB_POOL_SIZE must be at least 1, got '-1'"),
    ("DB_MAX_OVERFLOW", "-2", "DB_MAX_OVERFLOW must be at least 0"),
    ("DB_POOL_TIMEOUT", "soon", "DB_POOL_TIMEOUT must be a number"),
    ("DB_RETRY_BUDGET_SECONDS", "nan", "DB_RETRY_BUDGET_SECONDS must be at least"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1"),
    ("DATABASE_URL", "", "DATABASE_URL is not set"),
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
    result = run([sys.executable, "reset_db.py", "--stock", "7", "--items", "3", "--max-per-user", "2"])
    assert result.returncode == 0, result.stderr
    assert "3 item(s) with 7 units each, at most 2 per user" in result.stdout
    rows = conn.execute("SELECT id, stock, remaining, max_per_user FROM items ORDER BY id").fetchall()
    assert [tuple(row.values()) for row in rows] == [(1, 7, 7, 2), (2, 7, 7, 2), (3, 7, 7, 2)]


def test_dotenv_is_read_without_overriding_the_environment(tmp_path):
    for name in ["app.py", "db.py"]:
        shutil.copy(ROOT / name, tmp_path)
    (tmp_path / ".env").write_text("DB_POOL_TIMEOUT=9\nTOTAL_REQUESTS=77\n")
    code = "import os, app; print(os.environ['DB_POOL_TIMEOUT'], os.environ['TOTAL_REQUESTS'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "DB_POOL_TIMEOUT": "2"}, timeout=60)
    assert result.stdout.split() == ["2", "77"], result.stderr
