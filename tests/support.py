"""What the tests share: requests through Flask's test client, raw sockets to real gunicorn,
the database checks, holding an item's row lock, and a database that stops answering.
conftest.py makes fixtures of them."""
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import chaos
import db

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


def wait_for(condition, seconds=10, pause=0.02):
    """condition()'s first true value within `seconds`, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(pause)
    return None


def private_database():
    """True when DATABASE_URL is the private PostgreSQL of scripts/pg.sh, which tests may stop."""
    return chaos.private_database(chaos.parse_options([]))


frozen_database = chaos.frozen_database  # every process of the private PostgreSQL stopped


def backends_waiting_on_commit(conn):
    """{pid: application_name} of the server processes whose COMMIT waits for a standby."""
    rows = conn.execute(db.query("backends_waiting_on_commit", db.TEST_QUERIES)).fetchall()
    return {row["pid"]: row["application_name"] for row in rows}


def service_backend_waiting_on_commit(conn):
    """The pid of a server process of the service whose COMMIT waits, or None."""
    waiting = backends_waiting_on_commit(conn)
    return next((pid for pid, name in waiting.items() if name == db.APPLICATION_NAME), None)


def write_and_commit(conn):
    with conn.transaction():
        conn.execute(db.query("write_a_temporary_table", db.TEST_QUERIES))


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
    conn.execute(db.query("hold_commits", db.TEST_QUERIES))
    try:
        conn.execute(db.query("reload_configuration", db.TEST_QUERIES))
        if not wait_for(lambda: commit_is_held(conn)):
            raise RuntimeError("the server did not start holding commits")
        yield
    finally:
        conn.execute(db.query("release_commits", db.TEST_QUERIES))
        conn.execute(db.query("reload_configuration", db.TEST_QUERIES))
