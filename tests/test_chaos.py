"""Short chaos runs: every fault mode during a --retry burst through real gunicorn."""
import pytest

from verify import chaos


def short_run(mode, *arguments):
    options = chaos.parse_options([mode, "--requests", "1500", "--stock", "1200", "--processes", "20",
                                   "--pause", "0.25", *arguments])
    return chaos.run_mode(mode, options)


def assert_kept_every_promise(result, failures):
    assert failures == []
    assert result["verdict"] == "ok"
    assert result["201"] == 1200 and result["409"] == 300
    assert result["other 5xx"] == 0 and result["lost"] == 0 and result["double sales"] == 0
    assert result["worker timeouts"] == 0
    # Exactly the stock sold, through the faults: sales went on. How soon is reported, not judged.


@pytest.mark.parametrize("mode, faults", [("kill-worker", chaos.REPEATS), ("kill-connections", chaos.REPEATS)])
def test_faults_lose_and_double_nothing(mode, faults):
    result, failures = short_run(mode)
    assert_kept_every_promise(result, failures)
    assert result["faults"] == faults


def test_lock_hog_answers_503_within_the_budget_then_sales_resume():
    result, failures = short_run("lock-hog")
    assert_kept_every_promise(result, failures)
    assert result["503"] >= 1


def test_database_restarts_lose_nothing(conn):
    options = chaos.parse_options([])
    if not chaos.private_database(options):
        pytest.skip("DATABASE_URL is not the private PostgreSQL that restart-db restarts")
    conn.close()
    result, failures = short_run("restart-db")
    assert_kept_every_promise(result, failures)
    assert result["faults"] == len(chaos.RESTARTS)


def test_a_frozen_database_is_answered_503_and_loses_nothing(stoppable_database):
    """The database stops answering with its sockets open for three times the budget: every
    request ends at its deadline with a 503 (none waits on until the client gives up), no
    worker is killed, and sales resume after the thaw."""
    result, failures = short_run("freeze-db", "--freeze", "3", "--budget", "1")
    assert_kept_every_promise(result, failures)
    assert result["faults"] == 1
    assert result["503"] >= 1
    assert result["transport errors"] == 0
    print(f"freeze-db, 3 s freeze, 1 s budget: slowest answer {result['slowest s']} s, "
          f"{result['503']} answers 503, next sale {result['recovery s']} s after the thaw")


def test_holds_expiring_and_paid_for_through_worker_kills_and_database_restarts(stoppable_database, conn):
    """Workers killed and PostgreSQL restarted while holds are made, paid for, some too late, and
    expire: exactly the stock confirmed in the end, no hold left past its expiry, no unit lost
    or returned twice."""
    conn.close()
    options = chaos.parse_options(["holds", "--requests", "600", "--stock", "400", "--processes", "20",
                                   "--pause", "0.25"])
    result, failures = chaos.run_mode("holds", options)
    assert failures == [] and result["verdict"] == "ok"
    assert result["faults"] == chaos.REPEATS + len(chaos.RESTARTS)
    assert result["lost"] == 0 and result["double sales"] == 0 and result["other 5xx"] == 0
    assert result["worker timeouts"] == 0
