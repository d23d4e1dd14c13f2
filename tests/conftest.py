"""Fixtures: the real PostgreSQL of DATABASE_URL, Flask's test client, and real gunicorn servers."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if not os.environ.get("DATABASE_URL"):
    pytest.exit("DATABASE_URL is not set: run the tests with `make test`", returncode=2)
# The tests reset the sale all the time: no process may remember an earlier sell-out.
# tests/test_sold_out_cache.py turns the cache on where it tests it.
os.environ["SOLD_OUT_CACHE_SECONDS"] = "0"

import app as service  # noqa: E402
import db  # noqa: E402
import reset_db  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real gunicorn process serving the app on a free local port."""

    def __init__(self, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_ready(self, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.process.stdout.read()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready")

    def worker_pids(self):
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()

    def buy(self, item_id=1, user_id="alice", quantity=1, key=None, timeout=15):
        headers = {"Idempotency-Key": key} if key else {}
        return requests.post(f"{self.url}/buy_ticket", timeout=timeout, headers=headers,
                             json={"item_id": item_id, "user_id": user_id, "quantity": quantity})


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
    running = Server(WEB_CONCURRENCY="4")
    try:
        yield running.wait_ready()
    finally:
        running.stop()


@pytest.fixture
def start_server():
    """Start extra gunicorn servers with their own environment; all are stopped afterwards."""
    started = []

    def start(**env):
        started.append(Server(**env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def purchases(conn, item_id=1):
    return conn.execute(db.query("list_purchases"), {"item_id": item_id}).fetchall()


def item(conn, item_id=1):
    return conn.execute(db.query("get_item"), {"item_id": item_id}).fetchone()
