"""What the tests share: requests through Flask's test client, raw sockets to real gunicorn,
the database checks, holding an item's row lock, the `flask` command line, bursts of buyers
around a command, the slow clients and stand-in upstreams of the nginx tests, tokens, metrics,
a browser, and a database that stops answering. conftest.py makes fixtures of them."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import jwt

import requests
from prometheus_client.parser import text_string_to_metric_families

import db
from verify import QUERIES, chaos

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


def assert_http_problem(response, status, code):
    """As assert_problem, for an answer of real gunicorn (a requests.Response)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
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
    return conn.execute(db.query("list_purchases", QUERIES), {"item_id": item_id}).fetchall()


def item(conn, item_id=1):
    return conn.execute(db.query("get_item"), {"item_id": item_id}).fetchone()


def purchase_states(conn, item_id=None):
    """Every purchase (of one item) with its state, as stored."""
    return run_test_query(conn, "list_purchase_states", {"item_id": item_id})


def set_expiry(conn, purchase_id, seconds):
    """Move a hold's expiry to `seconds` from now (negative: it has expired)."""
    run_test_query(conn, "set_expiry", {"purchase_id": purchase_id, "seconds": seconds})


def cut_service_connections(conn):
    conn.execute(db.query("terminate_connections", QUERIES), {"application_name": db.APPLICATION_NAME})


@contextmanager
def row_lock_held(item_id=1, database_url=None):
    """Another session holds the item's row lock, as a purchase does, until the block ends."""
    with db.connect(database_url) as hog, hog.transaction():
        hog.execute(db.query("lock_item", QUERIES), {"item_id": item_id})
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


def run(command, **env):
    """A command in a real subprocess in the project folder; `env` overrides the environment."""
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def flask_command(*args, timeout=120, **env):
    """`flask --app app ARGS...` in a real subprocess; `env` overrides the environment."""
    return subprocess.run([*FLASK, *map(str, args)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def run_test_query(conn, name, params=None):
    """The rows of verify/queries/<name>.sql, in a transaction of their own."""
    with conn.transaction():
        cursor = conn.execute(db.query(name, QUERIES), params or {})
        return cursor.fetchall() if cursor.description else []


def make_legacy_database(conn, stock, items=1):
    """The schema as reset_db.py made it before migrations (no schema_migrations), seeded."""
    with conn.transaction():
        conn.execute(db.query("drop_schema"))
        conn.execute(db.query("legacy_create_items", QUERIES))
        conn.execute(db.query("legacy_create_purchases", QUERIES))
        conn.execute(db.query("legacy_seed_items", QUERIES),
                     {"count": items, "stock": stock, "max_per_user": stock})


def legacy_buy(conn, item_id, user_id, quantity, key):
    """A purchase as the code before payment windows made it (schema version 5 or older)."""
    with conn.transaction():
        return conn.execute(db.query("legacy_buy_ticket", QUERIES), {
            "item_id": item_id, "user_id": user_id, "quantity": quantity, "idempotency_key": key}).fetchone()


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
def parse_answer(answer):
    """A raw HTTP answer as (status, headers with lower-case names, body bytes)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(":", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}, body


def assert_raw_problem(answer, status, code):
    """The raw answer is a problem+json with this status and code; returns its headers and body."""
    got, headers, body = parse_answer(answer)
    assert got == status, answer
    assert headers["content-type"] == "application/problem+json", answer
    problem = json.loads(body)
    assert PROBLEM_FIELDS <= problem.keys()
    assert problem["status"] == status and problem["code"] == code
    return headers, problem


class Slowloris:
    """`count` connections that each send a request line, then one header line every `pause`
    seconds and never the blank line that ends the headers. A connection the server drops is
    opened again, as an attacker would. Runs in a thread from start() to stop()."""

    def __init__(self, url, count, pause=1.0, max_seconds=120):
        self.url, self.count, self.pause, self.max_seconds = url, count, pause, max_seconds
        self.opened = self.dropped = 0
        self.sockets = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self):
        sock = open_socket(self.url, timeout=5)
        sock.sendall(b"POST /buy_ticket HTTP/1.1\r\n")
        self.opened += 1
        return sock

    def run(self):
        self.sockets = [self.connect() for _ in range(self.count)]
        self.all_open.set()
        deadline = time.monotonic() + self.max_seconds
        line = 0
        while not self.stopping.wait(self.pause) and time.monotonic() < deadline:
            line += 1
            for index, sock in enumerate(self.sockets):
                try:
                    sock.sendall(f"X-Slow-{line}: {line}\r\n".encode())
                except OSError:  # the server dropped it
                    self.dropped += 1
                    sock.close()
                    self.sockets[index] = self.connect()

    def start(self):
        self.all_open = threading.Event()
        self.thread.start()
        if not self.all_open.wait(30):
            raise RuntimeError("the slow connections could not all be opened")
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()


class StandInUpstream:
    """A stand-in for gunicorn on a unix socket: records each request's head, then answers
    200 `{}`, or, `dying`, closes the connection unanswered as a worker killed mid-request does."""

    def __init__(self, path, dying=False):
        self.dying = dying
        self.heads = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        os.chmod(path, 0o777)  # nginx's workers may run as another user; the folder guards it
        self.listener.listen(64)
        self.address = f"unix:{path}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            with connection:
                connection.settimeout(5)
                received = b""
                while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
                    received += chunk
                self.heads.append(received.partition(b"\r\n\r\n")[0].decode("latin-1"))
                if not self.dying:
                    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 2\r\n\r\n{}")

    def header(self, index, name):
        """The value of header `name` in the index-th request, or None."""
        for line in self.heads[index].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def stop(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread waiting in accept()
        except OSError:
            pass
        self.listener.close()
# Verified mode: the tests' identity provider signs with this secret (HS256).
TOKEN_SECRET = "tests-only-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too


def mint(sub="alice", secret=TOKEN_SECRET, algorithm="HS256", lifetime=300, headers=None, **claims):
    """A signed token for `sub`, valid for `lifetime` seconds; `claims` add or override claims
    (None removes one)."""
    payload = {"sub": sub, "exp": int(time.time()) + lifetime, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}
def burst(server, count, threads=20, item_id=1, prefix="buyer"):
    """`count` purchases of one unit each, a distinct user each, from `threads` threads;
    answers counted by (status, code), a 201 counted as (201, "created")."""
    def one(n):
        answer = server.buy(item_id=item_id, user_id=f"{prefix}-{n}")
        return answer.status_code, answer.json().get("code", "created")

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(count)))


def scrape(url):
    """GET /metrics, parsed: {(name, ((label, value), ...)): value} for every sample."""
    answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def scrape_when(url, condition):
    """scrape(url) once condition(samples) holds, or the last scrape after wait_for()'s time, for
    the assertions to explain: each worker writes its counts about once a second
    (observe.FLUSH_SECONDS), so a scrape right after a burst may lag the last answers."""
    samples = {}

    def settled():
        nonlocal samples
        samples = scrape(url)
        return condition(samples)

    wait_for(settled, pause=0.2)
    return samples


def answers_counted(samples, *routes):
    """The answers of these routes that flashsale_http_requests_total counts."""
    return sum(value for (name, labels), value in samples.items()
               if name == "flashsale_http_requests_total" and dict(labels)["route"] in routes)


def sample(samples, name, **labels):
    """One sample's value from scrape(), 0 when absent (a counter nothing has counted yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def set_sale(conn, item_id, remaining=None, starts_in=None, ends_in=None):
    """Change an item's remaining stock and sale window (in seconds from now; None: unchanged)."""
    conn.execute(db.query("set_sale", QUERIES), {
        "item_id": item_id, "remaining": remaining, "starts_in": starts_in, "ends_in": ends_in})


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# What headless Chromium needs as root on a machine without a display or a network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=420,900"]


def open_browser(profile):
    """Debian's Chromium through Debian's chromedriver, with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_for(condition, seconds=15, pause=0.02):
    """condition()'s first true value within `seconds`, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(pause)
    return None


def private_database():
    """True when DATABASE_URL is the private PostgreSQL of deploy/pg.sh, which tests may stop."""
    return chaos.private_database(chaos.parse_options([]))


frozen_database = chaos.frozen_database  # every process of the private PostgreSQL stopped


def backends_waiting_on_commit(conn):
    """{pid: application_name} of the server processes whose COMMIT waits for a standby."""
    rows = conn.execute(db.query("backends_waiting_on_commit", QUERIES)).fetchall()
    return {row["pid"]: row["application_name"] for row in rows}


def service_backend_waiting_on_commit(conn):
    """The pid of a server process of the service whose COMMIT waits, or None."""
    waiting = backends_waiting_on_commit(conn)
    return next((pid for pid, name in waiting.items() if name == db.APPLICATION_NAME), None)


def write_and_commit(conn):
    with conn.transaction():
        conn.execute(db.query("write_a_temporary_table", QUERIES))


def commit_is_held(conn):
    """True when a COMMIT that writes waits for a synchronous standby: a probe's COMMIT is seen
    waiting, then cancelled (the server then completes it without the standby)."""
    with db.connect() as probe, ThreadPoolExecutor(1) as background:
        pid = probe.info.backend_pid
        committed = background.submit(write_and_commit, probe)

        def settled():
            if pid in backends_waiting_on_commit(conn):
                return "held"
            return "committed" if committed.done() else None

        state = wait_for(settled)
        if state != "committed":
            probe.cancel_safe()
        committed.result()
    return state == "held"


@contextmanager
def commits_held(conn):
    """Every COMMIT that writes waits, unanswered, until the block ends (see hold_commits.sql).
    statement_timeout does not bound that wait: the server commits after the statement ends."""
    conn.execute(db.query("hold_commits", QUERIES))
    try:
        conn.execute(db.query("reload_configuration", QUERIES))
        if not wait_for(lambda: commit_is_held(conn)):
            raise RuntimeError("the server did not start holding commits")
        yield
    finally:
        conn.execute(db.query("release_commits", QUERIES))
        conn.execute(db.query("reload_configuration", QUERIES))
