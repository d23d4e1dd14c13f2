"""What the tests share: requests through Flask's test client, raw sockets to real gunicorn,
the database checks, and holding an item's row lock. conftest.py makes fixtures of them."""
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import requests
from prometheus_client.parser import text_string_to_metric_families

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


def cut_service_connections(conn):
    conn.execute(db.query("terminate_connections", db.TEST_QUERIES), {"application_name": db.APPLICATION_NAME})


@contextmanager
def row_lock_held(item_id=1, database_url=None):
    """Another session holds the item's row lock, as a purchase does, until the block ends."""
    with db.connect(database_url) as hog, hog.transaction():
        hog.execute(db.query("lock_item", db.TEST_QUERIES), {"item_id": item_id})
        yield


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


def sample(samples, name, **labels):
    """One sample's value from scrape(), 0 when absent (a counter nothing has counted yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def set_sale(conn, item_id, remaining=None, starts_in=None, ends_in=None):
    """Change an item's remaining stock and sale window (in seconds from now; None: unchanged)."""
    conn.execute(db.query("set_sale", db.TEST_QUERIES), {
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


def wait_for(condition, seconds=15, every=0.1):
    """True once `condition()` is true; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
