"""What the tests share: requests through Flask's test client, raw sockets to real gunicorn,
the database checks, holding an item's row lock, the `flask` command line, and bursts of buyers
around a command. conftest.py makes fixtures of them."""
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import db

ROOT = Path(__file__).resolve().parent.parent
FLASK = [str(Path(sys.executable).parent / "flask"), "--app", "app"]  # the virtualenv's own

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}


def buy(client, headers=None, **body):
    """POST /buy_ticket with a JSON body: item 1 for alice unless the fields say otherwise."""
    body = {"item_id": 1, "user_id": "alice", **body}
    return client.post("/buy_ticket", json=body, headers=headers or {})


def post_raw(client, data, content_type="application/json", headers=None):
    """POST /buy_ticket with these exact bytes."""
    return client.post("/buy_ticket", data=data, content_type=content_type, headers=headers or {})


def assert_problem(response, status, code):
    """The answer is an RFC 9457 problem with this status and code; returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert PROBLEM_FIELDS <= body.keys()
    assert body["status"] == status and body["code"] == code
    return body


def open_socket(url, timeout=10):
    """A plain TCP connection to the server at http://host:port."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_until_closed(sock):
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def raw_request(url, head, body=b"", close_write=False, timeout=10):
    """Send bytes over a real socket; return the status and the whole answer."""
    with open_socket(url, timeout) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    return int(answer.split(b" ", 2)[1]), answer


def purchases(conn, item_id=1):
    return conn.execute(db.query("list_purchases", db.TEST_QUERIES), {"item_id": item_id}).fetchall()


def item(conn, item_id=1):
    return conn.execute(db.query("get_item"), {"item_id": item_id}).fetchone()


def cut_service_connections(conn):
    conn.execute(db.query("terminate_connections", db.TEST_QUERIES), {"application_name": db.APPLICATION_NAME})


@contextmanager
def row_lock_held(item_id=1, database_url=None):
    """Another session holds the item's row lock, as a purchase does, until the block ends."""
    with db.connect(database_url) as hog, hog.transaction():
        hog.execute(db.query("lock_item", db.TEST_QUERIES), {"item_id": item_id})
        yield


@contextmanager
def restock_held(item_id, units, database_url=None):
    """Another session restocks the item and holds its row lock, uncommitted, until the block
    ends: a purchase queued behind it then finds the restock committed."""
    with db.connect(database_url) as hog, hog.transaction():
        hog.execute(db.query("restock_item"), {"item_id": item_id, "units": units})
        yield


def wait_for_waiting_buyers(conn, count, attempts=500):
    """Wait until `count` of the service's sessions wait for a lock; False if they never do."""
    for _ in range(attempts):
        if run_test_query(conn, "count_waiting_buyers",
                          {"application_name": db.APPLICATION_NAME})[0]["waiting"] >= count:
            return True
        time.sleep(0.02)
    return False


def flask_command(*args, timeout=120, **env):
    """`flask --app app ARGS...` in a real subprocess; `env` overrides the environment."""
    return subprocess.run([*FLASK, *map(str, args)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def run_test_query(conn, name, params=None):
    """The rows of tests/queries/<name>.sql, in a transaction of their own."""
    with conn.transaction():
        cursor = conn.execute(db.query(name, db.TEST_QUERIES), params or {})
        return cursor.fetchall() if cursor.description else []


def make_legacy_database(conn, stock, items=1):
    """The schema as reset_db.py made it before migrations (no schema_migrations), seeded."""
    with conn.transaction():
        conn.execute(db.query("drop_schema"))
        conn.execute(db.query("legacy_create_items", db.TEST_QUERIES))
        conn.execute(db.query("legacy_create_purchases", db.TEST_QUERIES))
        conn.execute(db.query("legacy_seed_items", db.TEST_QUERIES),
                     {"count": items, "stock": stock, "max_per_user": stock})


BURST_WAIT_SECONDS = 120


class Burst:
    """Buyers in threads, each buying one unit of an item as a new user, through a real server,
    until stopped. Every answer is kept with whether it was sent after `mark()`."""

    def __init__(self, server, item_id, buyers=12, most_requests=20000):
        self.server, self.item_id = server, item_id
        self.answers = []  # (sent_after_mark, status, body)
        self.lock = threading.Lock()
        self.marked = threading.Event()
        self.stopped = threading.Event()
        per_buyer = most_requests // buyers
        self.threads = [threading.Thread(target=self.buy, args=(number, per_buyer)) for number in range(buyers)]

    def buy(self, number, requests):
        for index in range(requests):
            if self.stopped.is_set():
                return
            after_mark = self.marked.is_set()
            response = self.server.buy(self.item_id, user_id=f"burst-{number}-{index}")
            with self.lock:
                self.answers.append((after_mark, response.status_code, response.json()))

    def count(self, after_mark=False):
        with self.lock:
            return sum(1 for marked, _, _ in self.answers if marked or not after_mark)

    def wait_for(self, answers, after_mark=False):
        """Wait until that many answers have come (since the mark); False if they never do."""
        deadline = time.monotonic() + BURST_WAIT_SECONDS
        while self.count(after_mark) < answers:
            if time.monotonic() > deadline or not any(thread.is_alive() for thread in self.threads):
                return False
            time.sleep(0.01)
        return True

    def mark(self):
        self.marked.set()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def acknowledged_ids(self):
        return [body["purchase_id"] for _, status, body in self.answers if status == 201]


def burst_around(server, item_id, command, before=150, after=150):
    """Run `command()` while buyers buy the item through `server`: `before` answers come first,
    `after` answers follow its return. Returns (the command's result, the burst's answers)."""
    with Burst(server, item_id) as burst:
        assert burst.wait_for(before), "the burst did not start"
        result = command()
        burst.mark()
        assert burst.wait_for(after, after_mark=True), "the burst stopped before the command returned"
    return result, burst
