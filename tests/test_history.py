"""history.py, the checker of a run's history: against a brute-force search on small generated
histories (a simulated service, correct and with faults), on hand-written faults, and on a real
burst through gunicorn and PostgreSQL."""
import random
import threading
import uuid
from collections import Counter

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import db
from verify import history
from history_model import FAULTS, OFFSET, START, Plan, Step, Story, explains, simulate
from support import purchase_states

TOLERANCE = 0.002  # the simulated clocks agree exactly; the hand-written times are whole ms
# How the checker fared against the search on faulty histories; conftest.py prints it.
FIGURES = Counter()


def check(operations, item, rows, plan, swept_at):
    return history.check(operations, [item], rows, OFFSET, cache_seconds=plan.cache_seconds,
                         tolerance=TOLERANCE, swept_at=swept_at)


def search(operations, item, rows, plan, swept_at):
    return explains(operations, item, rows, cache_seconds=plan.cache_seconds, tolerance=TOLERANCE,
                    swept_at=swept_at)


# --- Generated histories -----------------------------------------------------------------------

@st.composite
def plans(draw, most_steps=8, holds=True):
    """A small sale: a few buyers buying, confirming and cancelling, with overlapping requests,
    lost answers, retries, sweepers and, sometimes, a sold-out memory."""
    hold = draw(st.sampled_from([None, 0.02, 0.05, 0.1])) if holds else None
    steps = []
    for number in range(draw(st.integers(1, most_steps))):
        buys = [index for index, step in enumerate(steps) if step.kind == "buy"]
        kind = draw(st.sampled_from(["buy", "buy", "confirm", "cancel"])) if buys else "buy"
        target = draw(st.sampled_from(buys)) if kind != "buy" else -1
        user = steps[target].user if kind != "buy" and draw(st.integers(0, 5)) else draw(st.integers(0, 2))
        steps.append(Step(kind, user, quantity=draw(st.sampled_from([1, 1, 2])) if kind == "buy" else 1,
                          keyed=draw(st.integers(0, 4)) > 0, target=target, gap=draw(st.integers(0, 30)),
                          begin=draw(st.integers(0, 4)), wait=draw(st.integers(0, 30)),
                          reply=draw(st.integers(1, 8)),
                          fault=draw(st.sampled_from(["none"] * 5 + ["lost", "refused"])),
                          retry=draw(st.booleans())))
    length = sum(step.gap + 50 for step in steps)
    return Plan(stock=draw(st.integers(1, 4)), limit=draw(st.integers(1, 3)), hold=hold, steps=steps,
                sweeps=draw(st.lists(st.integers(0, length), max_size=2)),
                cache_seconds=draw(st.sampled_from([0.0, 0.0, 0.03])))


QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(QUICK, max_examples=150)
@given(plans())
def test_a_correct_service_is_explained_by_the_search_and_accepted_by_the_checker(plan):
    operations, item, rows, swept_at = simulate(plan)
    assert search(operations, item, rows, plan, swept_at)
    report = check(operations, item, rows, plan, swept_at)
    assert report.ok, report.text()


@settings(QUICK, max_examples=250)
@given(plans(), st.sampled_from(FAULTS))
def test_the_checker_never_rejects_what_the_search_explains(plan, fault):
    operations, item, rows, swept_at = simulate(plan, fault)
    explained = search(operations, item, rows, plan, swept_at)
    report = check(operations, item, rows, plan, swept_at)
    FIGURES["faulty histories"] += 1
    FIGURES["rejected by the search"] += not explained
    FIGURES["rejected by both"] += not explained and not report.ok
    if explained:
        assert report.ok, report.text()


@settings(QUICK, max_examples=30)
@given(plans(most_steps=60), st.integers(5, 40))
def test_longer_correct_histories_are_accepted(plan, stock):
    plan.stock = stock
    operations, item, rows, swept_at = simulate(plan)
    report = check(operations, item, rows, plan, swept_at)
    assert report.ok, report.text()


def test_the_search_rejects_what_the_service_could_not_have_answered():
    story = Story(stock=1)
    story.buy("alice", 0, 10)
    story.buy("bob", 20, 30)  # a second unit that was never there
    assert not story.explains(tolerance=TOLERANCE)
    assert not story.check(tolerance=TOLERANCE).ok


# --- Hand-written faults, each caught with a readable first violation --------------------------

def history_time(milliseconds):
    return START + milliseconds / 1000


def first_violation(story, check, **options):
    report = story.check(tolerance=TOLERANCE, **options)
    assert not report.ok
    violation = report.first(check)
    assert violation is not None, report.text()
    assert not story.explains(tolerance=TOLERANCE, **options), "the search explains what the checker rejects"
    return violation.describe(report.origin), report


def test_a_repeated_remaining_is_caught():
    story = Story(stock=3)
    story.buy("alice", 0, 10)  # remaining 2
    story.buy("bob", 20, 30, row={"remaining": 2})
    text, report = first_violation(story, 3)
    assert "purchase 2 reports remaining 2, but stock 3 less the 2 units sold up to it leaves 1" in text
    assert "row 1:" in text and "remaining_after 2" in text  # the other buyer told the same
    assert "history: 3. remaining order consistent with real time: 2 purchases (2 acknowledged), 1 violations" \
        in report.lines


def test_an_early_sold_out_is_caught():
    story = Story(stock=2)
    story.buy("alice", 0, 10)
    story.buy("bob", 20, 30, status=409, code="sold_out")  # one unit was left all along
    text, _ = first_violation(story, 4)
    assert "sold_out for 1 units, but real time places it between purchase 1 and the end, " \
           "where at least 1 units were left" in text
    assert "buy of item 1 by 'bob'" in text and "409 sold_out" in text


def test_a_sold_out_while_an_expired_hold_was_back_is_caught():
    story = Story(stock=1, hold=0.1)
    story.buy("alice", 0, 10)  # held until 105 ms, never confirmed
    story.set_row(1, status="expired", settled_at=300)  # a sweeper expired it late
    story.buy("bob", 200, 210, status=409, code="sold_out")  # but at 200 ms the unit was back
    text, _ = first_violation(story, 4)
    assert "holds that had expired or been cancelled before it was sent (purchases [1])" in text


def test_a_sold_out_from_the_memory_is_allowed_within_its_seconds():
    story = Story(stock=1, hold=0.1)
    story.buy("alice", 0, 10)  # remaining 0: workers remember the item sold out
    story.set_row(1, status="cancelled", settled_at=15)
    story.settle("cancel", "alice", 1, 12, 18)
    story.buy("bob", 30, 31, status=409, code="sold_out", key=None)  # answered from memory
    assert story.check(tolerance=TOLERANCE, cache_seconds=0.5).ok
    assert story.explains(tolerance=TOLERANCE, cache_seconds=0.5)
    first_violation(story, 4)  # without the memory, the unit was back: a false sold_out


def test_a_lost_acknowledged_purchase_is_caught():
    story = Story(stock=2)
    story.buy("alice", 0, 10)
    story.buy("bob", 20, 30)
    del story.rows[0]
    text, _ = first_violation(story, 1)
    assert "acknowledged purchase 1 is not in the database" in text and "'alice'" in text


def test_a_row_behind_a_409_is_caught():
    story = Story(stock=2)
    story.buy("alice", 0, 10, status=409, code="sold_out", row={})
    text, _ = first_violation(story, 1)
    assert "row 1 exists, but every buy with its key was refused" in text


def test_a_limit_reached_below_the_limit_is_caught():
    story = Story(stock=5, limit=2)
    story.buy("alice", 0, 10)
    story.buy("alice", 20, 30, status=409, code="limit_reached")  # 1 of 2 held: one more was allowed
    text, _ = first_violation(story, 5)
    assert "limit_reached for 1 units, but 'alice' never had more than 1 units it could count as active " \
           "(limit 2)" in text


def test_a_limit_reached_instead_of_sold_out_is_caught():
    story = Story(stock=1, limit=1)
    story.buy("alice", 0, 10)
    story.buy("alice", 20, 30, status=409, code="limit_reached")  # the stock is checked first
    text, _ = first_violation(story, 5)
    assert "whenever 'alice' could have been at the limit at most 0 units were left: the answer was sold_out" in text


def test_a_buyer_over_the_limit_is_caught():
    story = Story(stock=5, limit=1)
    story.buy("alice", 0, 10)
    story.buy("alice", 20, 30)
    text, _ = first_violation(story, 2)
    assert "'alice' had 1 active units (limit 1) when purchase 2 of 1 more was made" in text


def test_a_confirm_after_expiry_is_caught():
    story = Story(stock=1, hold=0.05)
    story.buy("alice", 0, 10)  # expires at 55 ms
    story.settle("confirm", "alice", 1, 70, 80)
    story.set_row(1, status="confirmed", settled_at=75)
    text, _ = first_violation(story, 6)
    assert "hold 1 was confirmed at or after its expiry" in text and "confirm purchase 1" in text


def test_a_holds_units_returned_twice_are_caught():
    story = Story(stock=2, hold=0.05)
    story.buy("alice", 0, 10)
    story.settle("cancel", "alice", 1, 20, 30)
    story.set_row(1, status="cancelled", settled_at=25)
    story.item["remaining"] += 1  # the cancel gave its unit back twice
    story.buy("bob", 40, 50, row={"remaining": 2})  # and the next buyer was told so
    text, report = first_violation(story, 3)
    assert "purchase 2 reports remaining 2, but stock 2 less the 2 units sold up to it leaves 0, " \
           "and at most 1 units can have been released before it" in text
    assert report.first(2) is not None  # stock - remaining no longer matches the rows either


def test_a_hold_never_expired_is_caught():
    story = Story(stock=1, hold=0.05)
    story.buy("alice", 0, 10)
    story.buy("bob", 100, 110, status=409, code="sold_out")
    text, report = first_violation(story, 6, swept_at=history_time(200))
    assert "hold 1 is still held at the final sweep" in text and "it never expired" in text
    assert report.first(4) is not None  # and bob was refused a unit that should have been back


def test_ids_against_real_time_are_caught():
    story = Story(stock=3)
    story.buy("alice", 0, 10, row={"id": 2, "remaining": 1})
    story.buy("bob", 20, 30, row={"id": 1, "remaining": 2})  # sent after alice's 201, yet sold first
    text, _ = first_violation(story, 3)
    assert "purchase 2 was answered at" in text and "before purchase 1 could have been made" in text


def test_a_hold_expired_before_the_expiry_is_caught():
    story = Story(stock=1, hold=0.5)
    story.buy("alice", 0, 10)
    story.settle("confirm", "alice", 1, 20, 30, status=409, code="hold_expired")
    text, _ = first_violation(story, 6)
    assert "confirm answered hold_expired at 0.030 s, before hold 1 expired at 0.505 s" in text


def test_disagreeing_answers_of_one_key_are_caught():
    story = Story(stock=3)
    buy = story.buy("alice", 0, 10)
    replay = dict(buy.attempts[0].body, remaining=1)  # a replay must carry the original body
    buy.attempts.append(history.Attempt(history_time(20), history_time(30), 201, replay))
    text, _ = first_violation(story, 6)
    assert "two definite answers of one buy disagree" in text and '"remaining": 1' in text


def test_items_are_checked_apart_and_a_key_is_the_buyers_on_every_item():
    story = Story(stock=2)
    story.buy("alice", 0, 10, key="order-1")
    story.buy("alice", 20, 30, status=422, code="idempotency_key_reused", key="order-1").item_id = 2
    other = {"id": 2, "stock": 5, "remaining": 5, "max_per_user": 5, "hold_seconds": None}
    report = history.check(story.operations, [story.item, other], story.rows, OFFSET, tolerance=TOLERANCE)
    assert report.ok, report.text()
    assert report.lines[0].startswith("history: 1. every answer matches the database: 1 acknowledged purchases, "
                                      "1 refused")
    assert "2 items, 1 rows" in report.lines[1]


def test_unknown_operations_are_counted_as_took_effect_or_not():
    story = Story(stock=3)
    story.buy("alice", 0, 10, status=None, row={})  # committed, the answer lost
    story.buy("bob", 20, 30, status=None)  # never reached the database
    report = story.check(tolerance=TOLERANCE)
    assert report.ok, report.text()
    assert "unknown: 1 took effect, 1 did not" in report.lines[0]
    assert story.explains(tolerance=TOLERANCE)


# --- The building blocks -----------------------------------------------------------------------

def test_the_fenwick_tree_and_the_range_minimum_agree_with_plain_sums():
    rng = random.Random(7)
    values = [rng.randint(0, 5) for _ in range(50)]
    tree = history.Fenwick(len(values))
    for position, value in enumerate(values):
        tree.add(position, value)
    for limit in range(-1, sum(values) + 2):
        expected = next((count for count in range(len(values) + 1) if sum(values[:count]) > limit), None)
        assert tree.shortest_prefix_over(limit) == expected
    table = history.RangeMin(values)
    for first in range(len(values)):
        for last in range(first, len(values)):
            assert table.min(first, last) == min(values[first:last + 1])


def test_record_times_an_attempt_and_keeps_its_answer():
    operation = history.Operation("buy", 1, "alice", "key-1")
    answer = requests.Response()
    answer.status_code, answer._content = 201, b'{"purchase_id": 1}'
    assert history.record(operation, lambda: answer) is answer

    def failing():
        raise requests.ConnectionError("reset")

    assert history.record(operation, failing) is None
    first, second = operation.attempts
    assert first.invoke <= first.complete <= second.invoke <= second.complete
    assert (first.status, first.body, second.status, second.body) == (201, {"purchase_id": 1}, None, {"error": "ConnectionError"})
    assert operation.answer is first and operation.code == "ok"


# --- A real burst ------------------------------------------------------------------------------

def test_a_real_burst_through_gunicorn_is_consistent(server, reset, conn):
    """300 keyed buys of 100 units from 20 threads through real gunicorn, recorded, then
    checked against the real database."""
    reset(stock=100)
    offset = history.wall_minus_monotonic()
    operations = [history.Operation("buy", 1, f"buyer-{n}", str(uuid.uuid4())) for n in range(300)]
    pending = iter(operations)
    lock = threading.Lock()

    def buyer():
        session = requests.Session()
        while True:
            with lock:
                operation = next(pending, None)
            if operation is None:
                return
            send = lambda: session.post(f"{server.url}/buy_ticket", timeout=15,
                                        headers={"Idempotency-Key": operation.key},
                                        json={"item_id": 1, "user_id": operation.user_id})
            history.record(operation, send)

    threads = [threading.Thread(target=buyer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    item = conn.execute(db.query("get_item"), {"item_id": 1}).fetchone()
    rows = purchase_states(conn, 1)
    report = history.check(operations, [item], rows, offset)
    assert report.ok, report.text()
    assert Counter(op.code for op in operations) == {"ok": 100, "sold_out": 200}
    assert "history: 3. remaining order consistent with real time: 100 purchases (100 acknowledged), " \
           "0 violations" in report.lines
