"""The local cluster (deploy/cluster.py): up, a burst through nginx with the primary killed once,
the synchronous-commit pitfalls, and down leaving nothing running. `make cluster-test`."""
import shutil
import signal
import threading
from pathlib import Path

import psycopg
import pytest
import requests

import db
import reset_db
from deploy import cluster, nginx
from verify import QUERIES, cluster_chaos
from support import scrape

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("pg_autoctl") is None or shutil.which("nginx", path=nginx.SEARCH_PATH) is None,
                       reason="pg_auto_failover or nginx is not installed: run `make cluster-test`"),
]


@pytest.fixture(scope="module")
def state():
    """The cluster of this checkout: brought up for these tests and down after them (one that was
    already running is used and left running)."""
    running = cluster.load_state()
    started_here = not running or not cluster.running_pids(running)
    if started_here:
        cluster.up()
    yield cluster.load_state()
    if started_here:
        cluster.down()
        assert not cluster.running_pids(cluster.load_state())
        assert not processes_using(cluster.FOLDER), "cluster-down left processes running"


def processes_using(folder):
    """Pids whose command line names the cluster folder (keepers, postmasters, nginx)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in cmdline.read_bytes() and cluster.alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def test_every_component_serves_and_commits_wait_for_the_standby(state):
    primary = cluster.healthy_pair(state)
    assert primary is not None
    assert cluster.synchronous(state, primary)
    for app in state["apps"].values():
        assert cluster.ready(app["url"])["replication"] == "synchronous"
    answer = requests.get(f"{state['url']}/readyz", timeout=5)
    assert answer.headers["Server"] == "nginx"
    assert answer.json()["replication"] == "synchronous"
    assert scrape(state["url"])[("flashsale_replication_synchronous", ())] == 1


def test_nginx_refuses_a_large_body_with_the_api_problem(state):
    answer = requests.post(f"{state['url']}/buy_ticket", data="x" * 5000, timeout=5,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"


def test_a_cancelled_wait_for_the_standby_still_commits_and_the_key_resolves_it(state):
    """COMMIT waits for the synchronous standby, and statement_timeout does not bound that wait.
    Cancelling it (what a client-side timeout would do) returns success with a warning: the
    purchase is committed on the primary and visible there, though no standby confirmed it.
    The same Idempotency-Key then finds the purchase instead of selling again."""
    primary = cluster.healthy_pair(state)
    standby = cluster_chaos.other_node(primary)
    url = cluster.node_url(state, primary)
    reset_db.reset(stock=10, database_url=url)
    purchase = {"item_id": 1, "user_id": "pitfall", "quantity": 1, "idempotency_key": "pitfall-1"}
    notices, outcome = [], {}
    buyer = psycopg.connect(url, autocommit=True, application_name="pitfall",
                            options="-c statement_timeout=100")
    buyer.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary))

    def buy():
        with buyer.transaction():
            outcome["row"] = buyer.execute(db.query("buy_ticket"), purchase).fetchone()

    standby_processes = cluster.process_tree(state["nodes"][standby]["pid"])
    cluster.signal_all(standby_processes, signal.SIGSTOP)  # the standby confirms nothing now
    try:
        thread = threading.Thread(target=buy)
        thread.start()
        with db.connect(url) as watcher:
            cluster.wait_for("the COMMIT waiting for the standby",
                             lambda: watcher.execute(db.query("commit_waits", QUERIES),
                                                     {"application_name": "pitfall"}).fetchall(), 5, 0.05)
            threading.Event().wait(0.3)  # three statement_timeouts: the wait goes on
            assert watcher.execute(db.query("commit_waits", QUERIES), {"application_name": "pitfall"}).fetchall()
            buyer.cancel_safe()
            thread.join(10)
            assert not thread.is_alive()
            assert outcome["row"][0] == "sold"
            assert any("canceling wait for synchronous replication" in notice for notice in notices)
            # Committed and visible on the primary, though the standby never confirmed it.
            keys = [row["idempotency_key"] for row in
                    watcher.execute(db.query("list_purchases", QUERIES), {"item_id": 1}).fetchall()]
            assert keys == ["pitfall-1"]
    finally:
        cluster.signal_all(standby_processes, signal.SIGCONT)
        buyer.close()
    with db.connect(url) as retry, retry.transaction():
        assert retry.execute(db.query("buy_ticket"), purchase).fetchone()["outcome"] == "replayed"
    assert cluster.wait_healthy(state) is not None


def test_killing_the_primary_loses_no_acknowledged_purchase_and_it_rejoins_with_pg_rewind(state):
    options = cluster_chaos.parse_options(["kill-primary", "--kills", "1", "--rate", "60",
                                           "--processes", "20", "--pause", "2"])
    victim = cluster.healthy_pair(state)
    log = Path(state["nodes"][victim]["log"])
    log_before = log.stat().st_size
    result, failures, notes = cluster_chaos.run_mode("kill-primary", state, options)
    print(result, notes)
    assert failures == []
    assert result["faults"] == 1
    assert result["lost"] == 0 and result["double sales"] == 0 and result["oversold"] == 0
    assert result["fault to sale s"] != "None", "no sale after the primary was killed"
    assert result["primary after"] != victim
    # The killed node came back as the standby through pg_rewind, with no step by hand.
    assert "pg_rewind" in log.read_text(errors="replace")[log_before:]
