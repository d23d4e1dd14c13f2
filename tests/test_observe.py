"""Metrics, request ids and request logs, from real gunicorn servers with several workers."""
import ipaddress
import json
import os
import signal
import sys
import time

import pytest
import requests

import db
from flashsale import metrics
from support import answers_counted, burst, run, sample, scrape, scrape_when

GENERATED_ID = 32  # uuid4().hex


def response_problem(answer, status, code):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == code


def test_counters_add_up_to_the_answers(start_server, reset):
    reset(stock=40)
    server = start_server(WEB_CONCURRENCY="3", SOLD_OUT_CACHE_SECONDS="30").wait_ready()
    answers = burst(server, 120)
    invalid = [server.buy(item_id=0).status_code for _ in range(3)]
    missing = [server.buy(item_id=99).status_code for _ in range(2)]
    assert answers[(201, "created")] == 40 and invalid == [422] * 3 and missing == [404] * 2
    samples = scrape_when(server.url, lambda samples: answers_counted(samples, "/buy_ticket") == 125)
    print(f"answers {dict(answers)}; fast-path sold_out "
          f"{sample(samples, 'flashsale_sold_out_cache_hits_total'):.0f}")
    assert sample(samples, "flashsale_purchases_total", outcome="sold") == 40
    assert sample(samples, "flashsale_purchases_total", outcome="sold_out") == answers[(409, "sold_out")]
    assert sample(samples, "flashsale_purchases_total", outcome="item_not_found") == 2
    assert sample(samples, "flashsale_units_sold_total", item_id="1") == 40
    assert 0 < sample(samples, "flashsale_sold_out_cache_hits_total") <= answers[(409, "sold_out")]
    route = "/buy_ticket"
    for status, count in [("201", 40), ("409", answers[(409, "sold_out")]), ("422", 3), ("404", 2)]:
        assert sample(samples, "flashsale_http_requests_total", route=route, status=status) == count
    assert sample(samples, "flashsale_request_duration_seconds_count", route=route) == 125
    assert sample(samples, "flashsale_request_duration_seconds_bucket", route=route, le="+Inf") == 125
    assert sample(samples, "flashsale_request_duration_seconds_bucket", route=route, le="10.0") == 125
    assert sample(samples, "flashsale_request_duration_seconds_sum", route=route) > 0
    assert 1 <= sample(samples, "flashsale_pool_connections") <= 3
    assert sample(samples, "flashsale_unavailable_total", reason="pool_timeout") == 0


def test_other_routes_are_counted_by_their_rule(start_server, reset):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="2").wait_ready()
    for path in ["/items/1", "/items/1", "/items/77", "/nowhere", "/items"]:
        requests.get(f"{server.url}{path}", timeout=10)
    samples = scrape_when(server.url, lambda samples: answers_counted(
        samples, "/items/<int:item_id>", "/items", "unmatched") == 5)
    assert sample(samples, "flashsale_http_requests_total", route="/items/<int:item_id>", status="200") == 2
    assert sample(samples, "flashsale_http_requests_total", route="/items/<int:item_id>", status="404") == 1
    assert sample(samples, "flashsale_http_requests_total", route="unmatched", status="404") == 1
    assert sample(samples, "flashsale_http_requests_total", route="/items", status="200") == 1


def test_a_dead_workers_counts_stay_and_its_gauges_go(start_server, reset, tmp_path):
    reset(stock=1000)
    server = start_server(WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).wait_ready()
    answers = burst(server, 40, threads=4)
    scrape_when(server.url, lambda samples: answers_counted(samples, "/buy_ticket") == 40)  # every worker's counts written
    victim = server.worker_pids()[0]
    assert (tmp_path / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (tmp_path / f"gauge_livesum_{victim}.db").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (tmp_path / f"gauge_livesum_{victim}.db").exists()
    assert (tmp_path / f"counter_{victim}.db").exists()
    server.wait_ready()
    assert sample(scrape(server.url), "flashsale_purchases_total", outcome="sold") == answers[(201, "created")] == 40


def test_a_restart_starts_from_an_empty_directory(start_server, reset, tmp_path):
    reset(stock=100)
    stale = tmp_path / "counter_1.db"
    stale.write_bytes(b"left over")
    server = start_server(WEB_CONCURRENCY="1", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).wait_ready()
    assert not stale.exists()
    assert server.buy().status_code == 201
    assert sample(scrape(server.url), "flashsale_purchases_total", outcome="sold") == 1
    server.stop()
    assert not list(tmp_path.glob("*.db"))  # the master cleans up after itself


def test_metrics_are_only_for_the_allowed_addresses(start_server):
    server = start_server(WEB_CONCURRENCY="1", METRICS_ALLOW="10.0.0.0/8, 192.0.2.7").wait_ready()
    answer = requests.get(f"{server.url}/metrics", timeout=10)
    response_problem(answer, 404, "not_found")
    assert len(answer.headers["X-Request-ID"]) == GENERATED_ID


def test_the_switch_turns_metrics_off(start_server, tmp_path):
    server = start_server(WEB_CONCURRENCY="2", METRICS="0", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).wait_ready()
    assert server.buy().status_code in (201, 409)
    response_problem(requests.get(f"{server.url}/metrics", timeout=10), 404, "not_found")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("address, allowed", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.1.2.3", False), ("", False), ("garbage", False), (None, False),
])
def test_allowed_addresses(address, allowed):
    networks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
    assert metrics.allowed(address, networks) is allowed


def test_an_unusable_metrics_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"],
                 PROMETHEUS_MULTIPROC_DIR=str(blocker / "metrics"))
    assert result.returncode != 0
    assert "Invalid configuration: PROMETHEUS_MULTIPROC_DIR" in result.stderr
    assert "Traceback" not in result.stderr


# Request ids

def test_every_answer_carries_a_request_id(server, reset):
    reset(stock=1)
    answers = [server.buy(user_id="a"), server.buy(user_id="b"), server.buy(item_id=0),
               requests.get(f"{server.url}/items/5", timeout=10),
               requests.get(f"{server.url}/buy_ticket", timeout=10),
               requests.get(f"{server.url}/healthz", timeout=10)]
    assert [answer.status_code for answer in answers] == [201, 409, 422, 404, 405, 200]
    ids = [answer.headers["X-Request-ID"] for answer in answers]
    assert all(len(request_id) == GENERATED_ID for request_id in ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("given, kept", [
    ("order-7f3a/retry-2", True), ("x" * 128, True), ("!~", True),
    ("x" * 129, False), ("has space", False), ("caf\u00e9", False), ("tab\there", False),
])
def test_a_given_request_id_is_echoed_if_it_is_sane(server, given, kept):
    answer = requests.post(f"{server.url}/buy_ticket", data=b"{", timeout=10,
                           headers={"X-Request-ID": given.encode("latin-1"), "Content-Type": "application/json"})
    response_problem(answer, 400, "invalid_json")
    echoed = answer.headers["X-Request-ID"]
    assert (echoed == given) if kept else (len(echoed) == GENERATED_ID and echoed != given)


# Request logs

def log_entries(server, logger):
    """The server's JSON log lines of `logger`."""
    lines = (line for line in server.output().splitlines() if line.startswith("{"))
    return [entry for entry in map(json.loads, lines) if entry["logger"] == logger]


def test_json_access_log_has_one_line_per_request(start_server, reset):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="2", ACCESS_LOG="1", LOG_FORMAT="json").wait_ready()
    sent = {}
    for name, user, item_id in [("sold", "a", 1), ("sold_out", "b", 1), ("invalid", "c", 0)]:
        answer = requests.post(f"{server.url}/buy_ticket", json={"item_id": item_id, "user_id": user},
                               headers={"X-Request-ID": f"test-{name}"}, timeout=10)
        sent[answer.headers["X-Request-ID"]] = answer.status_code
    answer = requests.get(f"{server.url}/items?limit=5", timeout=10)
    sent[answer.headers["X-Request-ID"]] = answer.status_code
    server.stop()  # the workers write their last lines as they exit
    entries = {entry["request_id"]: entry for entry in log_entries(server, "flashsale.access")}
    assert {request_id: entries[request_id]["status"] for request_id in sent} == sent
    assert entries["test-sold"]["code"] is None and entries["test-sold_out"]["code"] == "sold_out"
    assert entries["test-invalid"]["code"] == "invalid_request"
    listed = entries[answer.headers["X-Request-ID"]]
    assert listed["method"] == "GET" and listed["path"] == "/items?limit=5"
    assert all(entry["duration_ms"] >= 0 and entry["level"] == "info" for entry in entries.values())


def test_the_workers_batched_lines_stay_whole(start_server, reset):
    """Three workers write their lines in batches to one file: one whole line per request."""
    reset(stock=50)
    server = start_server(WEB_CONCURRENCY="3", ACCESS_LOG="1", LOG_FORMAT="json").wait_ready()
    answers = burst(server, 300)
    server.stop()
    lines = [line for line in server.output().splitlines() if '"flashsale.access"' in line]
    entries = [json.loads(line) for line in lines]
    assert sum(entry["path"] == "/buy_ticket" for entry in entries) == sum(answers.values()) == 300
    assert len({entry["pid"] for entry in entries}) > 1


def test_text_access_log(start_server, reset):
    reset(stock=0)
    server = start_server(WEB_CONCURRENCY="1", ACCESS_LOG="1").wait_ready()
    answer = requests.post(f"{server.url}/buy_ticket", json={"item_id": 1, "user_id": "a"}, timeout=10)
    request_id = answer.headers["X-Request-ID"]
    server.stop()
    line = next(line for line in server.output().splitlines() if f"request_id={request_id}" in line)
    assert " POST /buy_ticket 409 sold_out " in line and "ms request_id=" in line


def test_no_access_log_unless_asked(start_server, reset):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="1").wait_ready()
    request_id = server.buy().headers["X-Request-ID"]
    server.stop()
    assert request_id not in server.output()


def test_an_unexpected_error_is_logged_with_its_traceback_and_request_id(start_server, reset, conn):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="1", LOG_FORMAT="json").wait_ready()
    conn.execute(db.query("drop_schema"))  # every statement now fails, and not transiently
    try:
        answer = requests.post(f"{server.url}/buy_ticket", json={"item_id": 1, "user_id": "a"},
                               headers={"X-Request-ID": "broken-1"}, timeout=10)
    finally:
        reset(stock=1)
    response_problem(answer, 500, "internal_error")
    assert answer.headers["X-Request-ID"] == "broken-1"
    [entry] = log_entries(server, "flashsale.error")
    assert entry["request_id"] == "broken-1" and entry["level"] == "error"
    assert "Traceback" in entry["traceback"] and "UndefinedTable" in entry["traceback"]


def test_the_replication_gauge_says_whether_commits_wait_for_a_standby(start_server):
    """The private PostgreSQL has no standby: its primary commits alone (0). The cluster's test
    sees 1."""
    server = start_server(WEB_CONCURRENCY="1").wait_ready()
    assert scrape(server.url)[("flashsale_replication_synchronous", ())] == 0
