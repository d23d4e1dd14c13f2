"""The sold-out fast path: answered without the database, never underselling, expiring."""
import time

from support import purchases, row_lock_held


def test_sold_out_is_answered_without_the_database(start_server, reset, conn):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="1", SOLD_OUT_CACHE_SECONDS="30",
                          DB_RETRY_BUDGET_SECONDS="1").wait_ready()
    first = server.buy(user_id="first", key="first-order")
    assert first.status_code == 201 and first.json()["remaining"] == 0
    with row_lock_held():  # the database would make buyers wait, past the budget: 503
        refused = server.buy(user_id="late")
        replay_while_locked = server.buy(user_id="first", key="first-order")
    assert refused.status_code == 409 and refused.json()["code"] == "sold_out"
    # A request with an Idempotency-Key always asks the database (it may be a replay): it waited.
    assert replay_while_locked.status_code == 503
    replay = server.buy(user_id="first", key="first-order")
    assert replay.status_code == 201 and replay.json() == first.json()
    assert len(purchases(conn)) == 1


def test_a_sale_seeded_again_is_seen_once_the_entry_expires(start_server, reset):
    reset(stock=1)
    server = start_server(WEB_CONCURRENCY="1", SOLD_OUT_CACHE_SECONDS="0.5").wait_ready()
    assert server.buy(user_id="a").status_code == 201
    assert server.buy(user_id="b").status_code == 409
    reset(stock=5)
    time.sleep(0.6)
    assert server.buy(user_id="c").status_code == 201


def test_stock_left_is_never_refused(start_server, reset):
    reset(stock=3)
    server = start_server(WEB_CONCURRENCY="2", SOLD_OUT_CACHE_SECONDS="30").wait_ready()
    assert server.buy(user_id="big", quantity=3 + 1).status_code == 409  # not enough, but 3 left
    answers = [server.buy(user_id=f"user-{n}").status_code for n in range(5)]
    assert answers == [201, 201, 201, 409, 409]
