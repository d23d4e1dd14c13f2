"""A database that stops answering with its sockets open: every wait ends by the request's
deadline, the answer is 503, and a purchase cut off at COMMIT is resolved by its idempotency key.
The timings are printed (pytest -s), never asserted."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from flashsale import settings as configuration
from support import (assert_http_problem, commits_held, frozen_database, purchases,
                     service_backend_waiting_on_commit, wait_for)

BUDGET = "1"
UNKNOWN = "may or may not have been made"


def buy_until_answered(server, **purchase):
    """Buy, again while the answer is 503 (the pool reconnecting after the thaw); the last answer."""
    return wait_for(lambda: (response := server.buy(**purchase)).status_code != 503 and response,
                    seconds=15, pause=0.2)


def timed(function, *arguments, **keywords):
    started = time.monotonic()
    return function(*arguments, **keywords), time.monotonic() - started


def test_a_frozen_database_answers_503_in_time_and_the_retry_buys_once(stoppable_database, start_server,
                                                                       reset, conn):
    reset(stock=10)
    server = start_server(WEB_CONCURRENCY="2", DB_RETRY_BUDGET_SECONDS=BUDGET).wait_ready()
    assert server.buy(user_id="before").status_code == 201
    with frozen_database():
        frozen, bought_in = timed(server.buy, key="order-frozen")
        ready, ready_in = timed(requests.get, f"{server.url}/readyz", timeout=10)
        healthy = requests.get(f"{server.url}/healthz", timeout=10)
    print(f"frozen database, budget {BUDGET} s: purchase answered {frozen.status_code} after "
          f"{bought_in:.2f} s, /readyz {ready.status_code} after {ready_in:.2f} s")
    body = assert_http_problem(frozen, 503, "overloaded")
    assert frozen.headers["Retry-After"] == "1"
    assert UNKNOWN not in body["detail"]  # cut off before COMMIT: nothing was sold
    assert_http_problem(ready, 503, "not_ready")
    assert healthy.status_code == 200
    retried = buy_until_answered(server, key="order-frozen")
    assert retried and retried.status_code == 201
    assert [row["idempotency_key"] for row in purchases(conn)].count("order-frozen") == 1


@pytest.mark.parametrize("key", ["order-cut-at-commit", None])
def test_a_purchase_cut_off_at_commit_is_resolved_by_its_idempotency_key(stoppable_database, start_server,
                                                                         reset, conn, key):
    """The server got COMMIT and does not answer it (it waits for a standby that never comes,
    past the budget): the buyer is told that the outcome is unknown, and the same key finds it."""
    reset(stock=10)
    server = start_server(WEB_CONCURRENCY="1", DB_RETRY_BUDGET_SECONDS="2").wait_ready()
    with commits_held(conn), ThreadPoolExecutor(1) as background:
        answer = background.submit(server.buy, user_id="carol", key=key)
        assert wait_for(lambda: service_backend_waiting_on_commit(conn)), answer.result().text
        cut_off = answer.result()
    body = assert_http_problem(cut_off, 503, "overloaded")
    assert UNKNOWN in body["detail"]
    assert ("Retry with the same Idempotency-Key" if key else "could buy twice") in body["detail"]
    # It was sold, which is why the answer could not say that nothing was.
    assert wait_for(lambda: [row["user_id"] for row in purchases(conn)] == ["carol"])
    if key:
        retried = buy_until_answered(server, user_id="carol", key=key)
        assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
        assert len(purchases(conn)) == 1


def test_the_client_deadline_switch_is_checked():
    environ = {"DATABASE_URL": "postgresql://localhost/x"}
    assert configuration.from_environ(environ).client_deadline
    assert not configuration.from_environ({**environ, "DB_CLIENT_DEADLINE": "0"}).client_deadline
    with pytest.raises(configuration.ConfigError, match="DB_CLIENT_DEADLINE must be 1 or 0 \\(on or off\\), got 'maybe'"):
        configuration.from_environ({**environ, "DB_CLIENT_DEADLINE": "maybe"})
