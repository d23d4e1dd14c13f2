"""nginx in front of real gunicorn (deploy/nginx.py): slow clients never reach a worker, nginx's
own answers are problems, a POST is never sent twice, /metrics is for loopback only."""
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import requests

from flashsale.routes import inputs
from verify import proof
import reset_db
from flashsale import settings as configuration
from conftest import ROOT
from deploy import nginx
from deploy.local_server import free_address, wait_until_ready
from support import (Slowloris, assert_raw_problem, parse_answer, purchases, raw_request, row_lock_held, sample,
                     scrape_when, wait_for_waiting_buyers)

FIGURES = {}  # printed at the end of the run by conftest.py
SLOW_CONNECTIONS = 200
STOCK = 200
ATTACKS = 2


def sale(url, stock=STOCK):
    """A fresh sale and the proof's burst at it: twice the stock in purchases from 20 processes.
    Returns the proof's verdict and the purchases per second until the last one was answered."""
    options = proof.parse_options(["--url", url, "--database-url", os.environ["DATABASE_URL"],
                                   "--requests", str(2 * stock), "--processes", "20", "--stock", str(stock)])
    reset_db.reset(stock=stock, max_per_user=stock)
    answered = proof.run_burst(options, proof.make_purchases(options))
    item, rows = proof.database_state(options.database_url)
    # From the first answer, not from the start: forking the 20 processes takes longer than
    # the sale and varies more.
    first = min(purchase.answered_at[0] for purchase in answered)
    sold_at = [purchase.answered_at[-1] for purchase in answered if purchase.acknowledged]
    rate = (len(sold_at) - 1) / (max(sold_at) - first) if len(sold_at) > 1 else 0.0
    return proof.verdict(options, answered, item, rows), len(sold_at), rate


def test_slowloris_connections_do_not_stop_the_sale(start_proxied):
    server = start_proxied(WEB_CONCURRENCY="3")
    sale(server.url, stock=20)  # warm workers, as a sale opens on a service that has been up
    calm, attacked, dropped = [], [], 0
    for attack_round in range(ATTACKS):
        failures, sold, rate = sale(server.url)
        assert failures == [] and sold == STOCK
        calm.append(rate)
        # 200 connections, each a request line and then a header line a second: without nginx,
        # three of them hold gunicorn's three workers until its 30 s timeout and nothing sells.
        attack = Slowloris(server.url, SLOW_CONNECTIONS).start()
        try:
            attacked_at = time.monotonic()
            failures, sold, rate = sale(server.url)
            if attack_round == 0:  # nginx drops headers not whole within client_header_timeout
                time.sleep(max(0.0, nginx_header_timeout() + 2.5 - (time.monotonic() - attacked_at)))
        finally:
            attack.stop()
        assert failures == [], failures  # sold out exactly; every purchase answered 201 or 409
        assert sold == STOCK and attack.opened >= SLOW_CONNECTIONS
        attacked.append(rate)
        dropped += attack.dropped
    assert dropped >= SLOW_CONNECTIONS // 2, f"nginx dropped only {dropped} of the slow connections"
    failures, sold, rate = sale(server.url)
    assert failures == [] and sold == STOCK
    calm.append(rate)

    # The machine drifts: each attacked sale is compared with the calm sales before and after it.
    ratios = [rate * 2 / (before + after) for rate, before, after in zip(attacked, calm, calm[1:])]
    FIGURES["slowloris"] = (
        f"purchases/s through nginx, calm {' / '.join(f'{rate:.0f}' for rate in calm)}, with {SLOW_CONNECTIONS} "
        f"slowloris connections {' / '.join(f'{rate:.0f}' for rate in attacked)}: ratios "
        f"{' '.join(f'{ratio:.2f}' for ratio in ratios)} (target >= 0.9); nginx dropped {dropped} slow "
        f"connections at its header timeout")
    print(FIGURES["slowloris"])


def nginx_header_timeout():
    line = next(line for line in nginx.TEMPLATE.read_text().splitlines() if "client_header_timeout" in line)
    return float(line.split()[1].rstrip("s;"))


def test_nginx_refuses_what_the_api_refuses_as_problems(start_proxied, reset):
    reset(stock=10)
    server = start_proxied(WEB_CONCURRENCY="1")
    head = (b"POST /buy_ticket HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: ")

    # A body over the API's limit is refused by nginx before gunicorn sees it.
    status, answer = raw_request(server.url, head + str(inputs.MAX_BODY_BYTES + 1).encode())
    _, problem = assert_raw_problem(answer, 413, "payload_too_large")
    assert problem["detail"] == "The body is over 4 KiB."
    # One at the limit passes nginx and is judged by the app (not JSON): both limits agree.
    body = b"x" * inputs.MAX_BODY_BYTES
    status, answer = raw_request(server.url, head + str(len(body)).encode(), body)
    _, problem = assert_raw_problem(answer, 400, "invalid_json")

    status, answer = raw_request(server.url, b"GARBAGE")
    assert_raw_problem(answer, 400, "bad_request")

    # Chunked bodies: nginx reads them whole and passes them on with a Content-Length.
    chunked = (b"POST /buy_ticket HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked")
    too_big = b"x" * (inputs.MAX_BODY_BYTES + 1)
    status, answer = raw_request(server.url, chunked, b"%x\r\n%s\r\n0\r\n\r\n" % (len(too_big), too_big))
    assert_raw_problem(answer, 413, "payload_too_large")
    status, answer = raw_request(server.url, chunked, b"zz\r\nbroken\r\n")
    assert_raw_problem(answer, 400, "bad_request")
    purchase = b'{"item_id": 1, "user_id": "chunked"}'
    status, answer = raw_request(server.url, chunked, b"%x\r\n%s\r\n0\r\n\r\n" % (len(purchase), purchase))
    assert status == 201, answer
    status, answer = raw_request(server.url, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x")
    assert_raw_problem(answer, 414, "uri_too_long")
    status, answer = raw_request(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
    assert_raw_problem(answer, 431, "headers_too_large")
    status, answer = raw_request(server.url, b"GET /_problem HTTP/1.1\r\nHost: x\r\nConnection: close")
    assert_raw_problem(answer, 404, "not_found")

    # The service's own problems pass through untouched.
    answer = requests.get(f"{server.url}/items/99", timeout=10)
    assert answer.status_code == 404 and answer.json()["code"] == "item_not_found"
    assert server.buy(item_id=1, user_id="through-nginx").status_code == 201


def test_nginx_answers_502_as_a_problem_when_gunicorn_is_gone(start_nginx, nginx_folder):
    proxy = start_nginx([f"unix:{nginx_folder / 'nobody-listens.sock'}"])
    answer = requests.post(f"{proxy.url}/buy_ticket", json={"item_id": 1, "user_id": "alice"}, timeout=10)
    assert answer.status_code == 502
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == "bad_gateway" and "Idempotency-Key" in answer.json()["detail"]


def test_a_post_is_never_sent_twice_when_an_upstream_dies(start_nginx, stand_in):
    first, second = stand_in("first", dying=True), stand_in("second", dying=True)
    # max_fails=0: neither is set aside after its first failure, so the GET below may try both.
    proxy = start_nginx([f"{first.address} max_fails=0", f"{second.address} max_fails=0"])

    answer = requests.post(f"{proxy.url}/buy_ticket", json={"item_id": 1, "user_id": "alice"}, timeout=10)
    assert answer.status_code == 502 and answer.json()["code"] == "bad_gateway"
    assert len(first.heads) + len(second.heads) == 1, "the POST reached a second upstream"

    # A GET may be tried on the next upstream: the stand-ins do see a retry when one happens.
    requests.get(f"{proxy.url}/items/1", timeout=10)
    assert len(first.heads) + len(second.heads) == 3


def test_a_purchase_is_not_sent_again_when_its_gunicorn_worker_dies(start_server, start_nginx, nginx_folder,
                                                                    conn, reset):
    """Two real gunicorns behind nginx; the purchase waits on the row lock in one worker, which
    is killed. Sent again, it would wait in the other gunicorn and sell once the lock is free."""
    reset(stock=10)
    sockets = [nginx_folder / "first.sock", nginx_folder / "second.sock"]
    upstreams = [start_server(bind=f"unix:{path}", WEB_CONCURRENCY="1") for path in sockets]
    proxy = start_nginx([f"unix:{path} max_fails=0" for path in sockets])
    for _ in range(4):  # each gunicorn answers /readyz, in turn
        assert wait_until_ready(proxy.url, 30), "\n".join(upstream.output() for upstream in upstreams)
    with ThreadPoolExecutor(1) as pool:
        with row_lock_held():
            answer = pool.submit(requests.post, f"{proxy.url}/buy_ticket", timeout=30,
                                 json={"item_id": 1, "user_id": "alice"})
            assert wait_for_waiting_buyers(conn, 1), "the purchase never reached a worker"
            for upstream in upstreams:
                for pid in upstream.worker_pids():
                    os.kill(pid, signal.SIGKILL)
            wait([answer], timeout=5)  # a purchase sent again would wait here for the lock
        answer = answer.result()
    assert answer.status_code == 502 and answer.json()["code"] == "bad_gateway"
    assert purchases(conn) == [], "the purchase was sent to the other gunicorn"


def test_metrics_only_from_allowed_addresses_and_the_client_address_is_passed_on(start_nginx, stand_in):
    upstream = stand_in("app")
    proxy = start_nginx([upstream.address], metrics_allow=["127.0.0.1"])
    host, port = proxy.listen.rsplit(":", 1)

    def get(path, source):
        with socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "X-Forwarded-For: 10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\n\r\n".encode())
            return read_all(sock)

    assert_raw_problem(get("/metrics", "127.0.0.2"), 404, "not_found")
    assert upstream.heads == []
    assert parse_answer(get("/metrics", "127.0.0.1"))[0] == 200
    assert parse_answer(get("/items/1", "127.0.0.2"))[0] == 200
    assert [upstream.header(n, "X-Real-IP") for n in (0, 1)] == ["127.0.0.1", "127.0.0.2"]
    assert [upstream.header(n, "X-Forwarded-For") for n in (0, 1)] == ["127.0.0.1", "127.0.0.2"]


def read_all(sock):
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_the_rate_limit_is_off_by_default_and_answers_429_problems_when_on(start_nginx, stand_in):
    upstream = stand_in("app")
    proxy = start_nginx([upstream.address])
    with requests.Session() as session:
        assert {session.get(f"{proxy.url}/items/1", timeout=10).status_code for _ in range(30)} == {200}
    proxy.stop()

    limited = start_nginx([upstream.address], rate_limit=2)
    with requests.Session() as session:
        answers = [session.get(f"{limited.url}/items/1", timeout=10) for _ in range(30)]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert refused, "30 requests at once passed a limit of 2/s"
    for answer in refused:
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["code"] == "too_many_requests"


def test_the_rendered_configuration_is_valid_nginx(nginx_folder):
    config = nginx_folder / "check.conf"
    config.write_text(nginx.render(["unix:/run/flashsale.sock", "127.0.0.1:8001 backup"], "127.0.0.1:8080",
                                   nginx_folder, rate_limit=100, user=nginx.worker_user()))
    result = subprocess.run([nginx.nginx_binary(), "-t", "-q", "-p", str(nginx_folder), "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    assert "{{" not in text and "rate=100r/s" in text
    retry = next(line for line in text.splitlines() if line.strip().startswith("proxy_next_upstream "))
    assert "non_idempotent" not in retry


def test_a_bad_rate_limit_is_refused_in_one_line():
    result = subprocess.run([sys.executable, "-m", "deploy.nginx", "serve"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, env={**os.environ, "NGINX_RATE_LIMIT": "fast"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Invalid configuration: NGINX_RATE_LIMIT must be a whole number, got 'fast'" in result.stderr
    with pytest.raises(configuration.ConfigError):
        configuration.from_environ({"DATABASE_URL": "x", "NGINX_RATE_LIMIT": "-1"})


def test_serve_runs_gunicorn_behind_nginx_and_ctrl_c_stops_both(reset):
    reset(stock=10)
    url = f"http://{free_address()}"
    serving = subprocess.Popen([sys.executable, "-m", "deploy.nginx", "serve"], cwd=ROOT, start_new_session=True,
                               env={**os.environ, "API_URL": url}, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_until_ready(url, 30, serving), "make serve's nginx and gunicorn never answered"
        answer = requests.post(f"{url}/buy_ticket", json={"item_id": 1, "user_id": "alice"}, timeout=10)
        assert answer.status_code == 201 and answer.headers["Server"] == "nginx"
        folder = Path(serving.stdout.readline().split("configuration in ")[1].split("/nginx.conf")[0])
        assert (folder / "gunicorn.sock").is_socket()
        os.killpg(serving.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        assert serving.wait(30) == 0
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGKILL)
        serving.stdout.close()
    with pytest.raises(ProcessLookupError):  # gunicorn is gone
        os.killpg(serving.pid, 0)
    assert not nginx.accepts(url.removeprefix("http://")) and not folder.exists()  # and so is nginx


def test_metrics_are_served_through_nginx_to_loopback(start_proxied, reset):
    """gunicorn on a unix socket sees no client address: the one nginx passes on decides."""
    reset(stock=10)
    proxy = start_proxied()
    assert requests.post(f"{proxy.url}/buy_ticket", json={"item_id": 1, "user_id": "alice"}, timeout=10).status_code == 201
    sold = scrape_when(proxy.url, lambda samples: sample(samples, "flashsale_purchases_total", outcome="sold"))
    assert sample(sold, "flashsale_purchases_total", outcome="sold") == 1
