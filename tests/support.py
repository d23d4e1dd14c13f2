"""What the tests share: requests through Flask's test client, raw sockets to real gunicorn,
the database checks, holding an item's row lock, and the slow clients and stand-in upstreams
of the nginx tests. conftest.py makes fixtures of them."""
import json
import os
import socket
import threading
import time
from contextlib import contextmanager

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


def lock_waiters(conn):
    """How many of the service's connections wait for a lock."""
    return conn.execute(db.query("count_lock_waiters", db.TEST_QUERIES),
                        {"application_name": db.APPLICATION_NAME}).fetchone()["waiting"]


def cut_service_connections(conn):
    conn.execute(db.query("terminate_connections", db.TEST_QUERIES), {"application_name": db.APPLICATION_NAME})


@contextmanager
def row_lock_held(item_id=1, database_url=None):
    """Another session holds the item's row lock, as a purchase does, until the block ends."""
    with db.connect(database_url) as hog, hog.transaction():
        hog.execute(db.query("lock_item", db.TEST_QUERIES), {"item_id": item_id})
        yield


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

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread waiting in accept()
        except OSError:
            pass
        self.listener.close()
