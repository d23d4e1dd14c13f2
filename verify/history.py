"""Record a run's history and check it against the database afterwards: every answer a buyer got
must fit one serial order of each item's purchases, payments (a webhook delivery, kind "pay"; a
buyer's "confirm" of the releases before them), cancels and expiries, consistent with real time.

While the run goes on, record() times each attempt of an Operation on one monotonic clock. After
it, check() reads the operations, the items and their purchase rows, and returns a Report: one
line per check with its counts, and each violation with the operations and rows involved.
docs/history.md says what each check proves, how, at what cost, and what it cannot see.

The answers fix the order: every 201 carries `remaining` and every row its `remaining_after`,
and purchase ids are drawn under the item's row lock. So instead of searching the orders, as a
general linearizability checker must, each check sorts, sums and bisects: O(n log n) per item.
"""
import bisect
import heapq
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import requests

INFINITY = math.inf
# Database timestamps (its now()) put on the client's monotonic clock may be this far off.
TOLERANCE_SECONDS = 0.005
# Two database timestamps, or a body's ISO time against its row, agree to this.
DATABASE_PRECISION_SECONDS = 0.001
UNKNOWN = "unknown"  # the code of an attempt without a definite answer
ACTIVE = {"held", "confirmed"}
RELEASED = {"cancelled", "expired"}
KINDS = {"buy", "confirm", "cancel", "pay"}

CHECKS = {
    1: "every answer matches the database",
    2: "stock - remaining = active units, no buyer over the limit",
    3: "remaining order consistent with real time",
    4: "every sold_out could have been true",
    5: "every limit_reached could have been true",
    6: "answers agree, holds settle in time",
}


# --- Recording ---------------------------------------------------------------------------------

def is_definite(status):
    """2xx and 4xx are the service's decision. A 5xx, a transport error or a timeout is not: the
    operation may or may not have taken effect."""
    return status is not None and 200 <= status < 500


@dataclass
class Attempt:
    invoke: float  # time.monotonic() just before sending (system-wide: comparable across processes)
    complete: float  # time.monotonic() when answered or failed
    status: int | None  # HTTP status; None for a transport error or client timeout
    body: dict | None  # the decoded JSON answer, None if none or not JSON; {"error": name} when none came

    @property
    def definite(self):
        return is_definite(self.status)

    @property
    def code(self):
        """"ok" for a 2xx, the problem's code for a 4xx, UNKNOWN otherwise. A webhook's 200 says
        what the payment did (a redelivery, what it did the first time): "ok" for confirmed, else
        the outcome ("late", "refund_due", "under_review", "duplicate", ...)."""
        if not self.definite:
            return UNKNOWN
        body = self.body or {}
        if self.status < 300 and "outcome" in body:
            outcome = body.get("first_outcome") or body["outcome"]
            return "ok" if outcome == "confirmed" else outcome
        if self.status < 300:
            return "ok"
        return body.get("code") or str(self.status)


@dataclass
class Operation:
    kind: str  # "buy", "pay", "cancel", or "confirm" (a buyer's, before payments by webhook)
    item_id: int
    user_id: str
    key: str | None  # Idempotency-Key of every attempt; None: no key (sold_out may be cached)
    quantity: int = 1
    purchase_id: int | None = None  # the target of pay, confirm and cancel
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def invoked(self):
        return self.attempts[0].invoke if self.attempts else INFINITY

    @property
    def answer(self):
        """The first definite attempt, or None: the one that says what happened."""
        return next((attempt for attempt in self.attempts if attempt.definite), None)

    @property
    def answered(self):
        """When the first definite answer came; infinity without one (it may still take effect)."""
        answer = self.answer
        return answer.complete if answer else INFINITY

    @property
    def code(self):
        answer = self.answer
        return answer.code if answer else UNKNOWN


def wall_minus_monotonic():
    """time.time() - time.monotonic(): puts the database's now() on the monotonic clock."""
    return time.time() - time.monotonic()


def decoded_body(response):
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def record(operation, send):
    """Make one attempt of `operation` with send(), which returns a requests.Response or raises
    requests.RequestException; append its Attempt. Returns the response, or None on an error."""
    invoke = time.monotonic()
    try:
        response = send()
    except requests.RequestException as exc:  # its name says what happened, for the reports
        operation.attempts.append(Attempt(invoke, time.monotonic(), None, {"error": type(exc).__name__}))
        return None
    complete = time.monotonic()
    operation.attempts.append(Attempt(invoke, complete, response.status_code, decoded_body(response)))
    return response


# --- The report --------------------------------------------------------------------------------

def moment(seconds, origin):
    if math.isinf(seconds):
        return "never" if seconds > 0 else "-inf"
    return f"{seconds - origin:.3f} s"


def describe_attempt(attempt, origin):
    span = f"{moment(attempt.invoke, origin)} -> {moment(attempt.complete, origin)}"
    if attempt.status is None:
        return f"{span} no answer"
    if attempt.definite and attempt.status < 300:
        return f"{span} {attempt.status} {json.dumps(attempt.body, sort_keys=True)}"
    return f"{span} {attempt.status} {attempt.code if attempt.definite else (attempt.body or {}).get('code', '')}"


def describe_operation(operation, origin):
    target = f" purchase {operation.purchase_id}" if operation.kind != "buy" else ""
    head = (f"{operation.kind}{target} of item {operation.item_id} by {operation.user_id!r}, "
            f"key {operation.key!r}, quantity {operation.quantity}")
    return "\n".join([head] + [f"    attempt {describe_attempt(a, origin)}" for a in operation.attempts])


@dataclass
class Violation:
    check: int
    item_id: int
    message: str
    operations: list = field(default_factory=list)  # Operation
    rows: list = field(default_factory=list)  # Row

    def describe(self, origin):
        lines = [f"check {self.check}, item {self.item_id}: {self.message}"]
        lines += ["  " + describe_operation(operation, origin) for operation in self.operations]
        lines += ["  " + row.describe(origin) for row in self.rows]
        return "\n".join(lines)


@dataclass
class Report:
    lines: list[str]
    violations: list[Violation]
    origin: float = 0.0  # times in descriptions count from here: the history's first invoke

    @property
    def ok(self):
        return not self.violations

    def first(self, check):
        return next((v for v in self.violations if v.check == check), None)

    def text(self):
        """The lines, then the first violation of each check in full."""
        parts = list(self.lines)
        for number in CHECKS:
            violation = self.first(number)
            if violation:
                parts.append(f"first violation of check {number}:\n{violation.describe(self.origin)}")
        return "\n".join(parts)


# --- The rows and the operations of one item ---------------------------------------------------

def to_monotonic(value, offset):
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"database timestamps must be timezone-aware, got {value!r}")
    return value.timestamp() - offset


@dataclass
class Row:
    """One purchase row, its timestamps on the monotonic clock, and what the checks learn of it."""
    id: int
    item_id: int
    user_id: str
    quantity: int
    key: str
    remaining_after: int
    status: str
    created: float  # now() of the transaction that sold it
    expires: float | None
    settled: float | None  # now() of the transaction that confirmed, cancelled or expired it
    sellers: list = field(default_factory=list)  # the buys that may have made it
    invoked: float = -INFINITY  # its sale began after the first of them was sent...
    answered: float = INFINITY  # ...and was over before the first 201 for it came
    lower: float = -INFINITY  # its sale took the item's row lock no earlier than this
    settle_proven: float = INFINITY  # an answer completed by then proves its confirm or cancel
    deadline: float = INFINITY  # a buy sent after this cannot have counted it as active
    release_from: float = -INFINITY  # released: by a transaction that took the lock after this

    @classmethod
    def from_dict(cls, row, offset):
        return cls(id=row["id"], item_id=row["item_id"], user_id=row["user_id"],
                   quantity=row["quantity"], key=row["idempotency_key"],
                   remaining_after=row["remaining_after"], status=row.get("status") or "confirmed",
                   created=to_monotonic(row["created_at"], offset),
                   expires=to_monotonic(row.get("expires_at"), offset),
                   settled=to_monotonic(row.get("settled_at"), offset))

    @property
    def released(self):
        return self.status in RELEASED

    def describe(self, origin):
        times = f"created {moment(self.created, origin)}"
        if self.expires is not None:
            times += f", expires {moment(self.expires, origin)}"
        if self.settled is not None:
            times += f", settled {moment(self.settled, origin)}"
        return (f"row {self.id}: user {self.user_id!r}, key {self.key!r}, quantity {self.quantity}, "
                f"remaining_after {self.remaining_after}, {self.status}, {times}")


def purchase_of(answer):
    return (answer.body or {}).get("purchase_id") if answer else None


def acknowledges(op, row):
    return op.code == "ok" and purchase_of(op.answer) == row.id


@dataclass
class Settings:
    tolerance: float
    cache_seconds: float
    swept_at: float
    origin: float  # where the descriptions' times count from
    offset: float  # wall_minus_monotonic


class ItemHistory:
    """The operations and rows of one item, with the bounds that the checks share.

    The sales are the rows in id order, which is the order of the item's row lock. Sale i took
    the lock no earlier than lock_after[i] (its own lower bound, and any earlier sale's) and no
    later than lock_before[i] (the first 201 for it, or for any later sale)."""

    def __init__(self, item, operations, rows, key_groups, settings):
        self.id = item["id"]
        self.stock, self.remaining = item["stock"], item["remaining"]
        self.limit, self.hold = item["max_per_user"], item.get("hold_seconds")
        self.settings = settings
        self.tolerance = settings.tolerance
        self.violations = []
        self.operations = operations
        self.buys = [op for op in operations if op.kind == "buy"]
        self.settles = [op for op in operations if op.kind != "buy"]
        self.settles_by_purchase = group_by(self.settles, lambda op: op.purchase_id)
        self.rows = sorted(rows, key=lambda row: row.id)
        self.by_id = {row.id: row for row in self.rows}
        self.by_key = group_by(self.rows, lambda row: (row.user_id, row.key))
        self.key_groups = key_groups
        self.prefix_units = running(lambda a, b: a + b, [row.quantity for row in self.rows])
        self.sold_before = [0] + self.prefix_units  # units of sales 1..k: gap k comes after them
        self.find_sellers()
        self.find_settle_proofs()
        self.lock_after = running(max, [row.lower for row in self.rows])
        self.lock_before = running(min, [row.answered for row in reversed(self.rows)])[::-1]
        self.gap_after = [-INFINITY] + self.lock_after  # gap k of the lock order begins after sale k...
        self.gap_before = self.lock_before + [INFINITY]  # ...and ends before sale k+1

    def violation(self, check, message, operations=(), rows=()):
        self.violations.append(Violation(check, self.id, message, list(operations), list(rows)))

    def at(self, seconds):
        return moment(seconds, self.settings.origin)

    def find_sellers(self):
        """The buys that may have made each row: those of its (user, key) that ask for the same
        item and quantity (a retry or a replay), or a keyless buy acknowledged with its id."""
        for row in self.rows:
            row.sellers = [op for op in self.key_groups.get((row.user_id, row.key), [])
                           if op.item_id == self.id and op.quantity == row.quantity]
        for op in self.buys:
            row = self.by_id.get(purchase_of(op.answer)) if op.key is None and op.code == "ok" else None
            if row is not None and not row.sellers:
                row.sellers = [op]
        for row in self.rows:
            if row.sellers:
                row.invoked = min(op.invoked for op in row.sellers)
                row.answered = min((op.answered for op in row.sellers if acknowledges(op, row)), default=INFINITY)
            row.lower = max(row.invoked, row.created - self.tolerance)  # the lock comes after now()

    def find_settle_proofs(self):
        """An answer saying that a purchase is confirmed or cancelled proves that its confirm or
        cancel had the lock before that answer completed."""
        for op in self.settles:
            row = self.by_id.get(op.purchase_id)
            if row is not None and (op.kind, op.code) in SETTLED_BY:
                row.settle_proven = min(row.settle_proven, op.answered)
        for row in self.rows:
            expiry = row.expires + self.tolerance if row.expires is not None else INFINITY
            if row.released and row.settled is not None:
                row.release_from = row.settled - self.tolerance  # the lock comes after now()
            if row.released:
                row.deadline = min(expiry, row.settle_proven)
            elif row.status == "held":  # should have expired: a buy after its expiry did not count it
                row.deadline = expiry

    def window(self, op):
        """(first, last) moment at which op's answer may have been decided. A sold_out without a
        key may come from a worker's memory, set by a database answer up to cache_seconds
        earlier (and the few ms that answer took to come back)."""
        if self.cached(op):
            return op.invoked - self.settings.cache_seconds - self.tolerance, op.answered
        return op.invoked, op.answered

    def cached(self, op):
        return op.key is None and self.settings.cache_seconds > 0 and op.code == "sold_out"


def running(pick, values):
    """[v0, pick(v0, v1), pick(pick(v0, v1), v2), ...]: a running max, min or sum."""
    result = []
    for value in values:
        result.append(value if not result else pick(result[-1], value))
    return result


def group_by(values, key):
    groups = defaultdict(list)
    for value in values:
        groups[key(value)].append(value)
    return groups


class Fenwick:
    """Sums over positions 0..size-1 that grow by add(); each call O(log n)."""

    def __init__(self, size):
        self.tree = [0] * (size + 1)

    def add(self, position, value):
        index = position + 1
        while index < len(self.tree):
            self.tree[index] += value
            index += index & -index

    def sum_before(self, end):
        """The sum over positions 0..end-1."""
        total, index = 0, end
        while index > 0:
            total += self.tree[index]
            index -= index & -index
        return total

    def shortest_prefix_over(self, limit):
        """The fewest leading positions whose sum exceeds `limit` (values are >= 0), or None."""
        if limit < 0:
            return 0
        position, left = 0, limit
        step = 1 << len(self.tree).bit_length()
        while step:
            following = position + step
            if following < len(self.tree) and self.tree[following] <= left:
                position, left = following, left - self.tree[following]
            step >>= 1
        return position + 1 if position + 1 < len(self.tree) else None


class RangeMin:
    """The minimum of values[first..last] in O(1), after O(n log n) to build a sparse table."""

    def __init__(self, values):
        self.levels = [list(values)]
        width = 1
        while 2 * width <= len(values):
            below = self.levels[-1]
            self.levels.append([min(below[i], below[i + width]) for i in range(len(below) - width)])
            width *= 2

    def min(self, first, last):
        level = (last - first + 1).bit_length() - 1
        values = self.levels[level]
        return min(values[first], values[last - (1 << level) + 1])


# --- Check 1: every answer matches the database ------------------------------------------------

# The row's final status after each definite answer that says a purchase is settled.
SETTLED_BY = {("confirm", "ok"): "confirmed", ("cancel", "purchase_confirmed"): "confirmed",
              ("cancel", "ok"): "cancelled", ("confirm", "purchase_cancelled"): "cancelled",
              ("pay", "ok"): "confirmed", ("pay", "refund_due"): "confirmed"}
TARGET_STATUS = {"confirm": "confirmed", "cancel": "cancelled", "pay": "confirmed"}
# A payment `late` came after its hold ended: the row ends released, never confirmed by it.
SETTLE_CODES = {"ok", "purchase_cancelled", "purchase_confirmed", "hold_expired", "refund_due", "late"}
SETTLING_KINDS = {"confirmed": {"confirm", "pay"}, "cancelled": {"cancel"}}


def check_answers_match_rows(h):
    counts = Counter()
    for op in h.buys:
        if op.code == "ok":
            counts["acknowledged"] += 1
            check_acknowledged(h, op)
        elif op.code != UNKNOWN:
            counts["refused"] += 1
        elif op.key is not None:  # keyless ones are matched with the rows below
            counts["took_effect" if (op.user_id, op.key) in h.by_key else "no_effect"] += 1
    check_acknowledged_once(h)
    check_every_row_has_a_buy(h, counts)
    for op in h.settles:
        check_settle_answer(h, op, counts)
    return counts


def check_acknowledged(h, op):
    body = op.answer.body or {}
    row = h.by_id.get(body.get("purchase_id"))
    if row is None:
        h.violation(1, f"acknowledged purchase {body.get('purchase_id')} is not in the database", [op])
    elif (row.user_id, row.quantity) != (op.user_id, op.quantity) or (op.key and row.key != op.key) \
            or (op.key is None and (row.user_id, row.key) in h.key_groups):
        h.violation(1, f"acknowledged as purchase {row.id}, whose row is another purchase", [op], [row])
    elif wrong := body_differences(h, body, row):
        h.violation(1, f"the 201 of purchase {row.id} disagrees with its row: {'; '.join(wrong)}", [op], [row])


def check_acknowledged_once(h):
    """Two operations (two keys, or two keyless buys) told the same purchase id: one sale
    acknowledged twice, or a sale lost and another buyer's shown instead."""
    told = group_by([op for op in h.buys if op.code == "ok"], lambda op: purchase_of(op.answer))
    for purchase_id, ops in told.items():
        if len({(op.user_id, op.key) if op.key else id(op) for op in ops}) > 1:
            h.violation(1, f"purchase {purchase_id} was acknowledged to {len(ops)} different operations",
                        ops, [h.by_id[purchase_id]] if purchase_id in h.by_id else [])


def body_differences(h, body, row):
    """What a 201 says that its row does not (a replay carries the original body)."""
    expected = {"purchase_id": row.id, "item_id": row.item_id, "user_id": row.user_id,
                "quantity": row.quantity, "remaining": row.remaining_after}
    wrong = [f"{name} {body.get(name)!r}, row {value!r}" for name, value in expected.items()
             if body.get(name) != value]
    if h.hold is not None:
        if body.get("status") != "held":
            wrong.append(f"status {body.get('status')!r}, a new hold is 'held'")
        if not same_time(body.get("expires_at"), row.expires, h.settings.offset):
            wrong.append(f"expires_at {body.get('expires_at')!r}, row {h.at(row.expires)}")
    elif body.get("status", "confirmed") != "confirmed":
        wrong.append(f"status {body.get('status')!r} on an item sold at once")
    return wrong


def same_time(text, seconds, offset):
    try:
        stated = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return False
    return (stated.tzinfo is not None and seconds is not None
            and abs(to_monotonic(stated, offset) - seconds) <= DATABASE_PRECISION_SECONDS)


def check_every_row_has_a_buy(h, counts):
    """Each row was made by a buy that asked for it and was not refused. The rows of keyless
    buys that got no answer carry a key the server made: they are matched by buyer and quantity."""
    unanswered = Counter((op.user_id, op.quantity) for op in h.buys if op.key is None and op.code == UNKNOWN)
    for (user_id, key), rows in h.by_key.items():
        if len(rows) > 1:
            h.violation(1, f"key {key!r} of {user_id!r} has {len(rows)} rows", rows[0].sellers, rows)
    for row in h.rows:
        if row.sellers:
            if not any(op.code == UNKNOWN or acknowledges(op, row) for op in row.sellers):
                h.violation(1, f"row {row.id} exists, but every buy with its key was refused", row.sellers, [row])
        elif (row.user_id, row.key) in h.key_groups:
            h.violation(1, f"row {row.id} is for an item or quantity its key never asked for",
                        h.key_groups[(row.user_id, row.key)], [row])
        elif unanswered[(row.user_id, row.quantity)] > 0:
            unanswered[(row.user_id, row.quantity)] -= 1
            counts["took_effect"] += 1
        else:
            h.violation(1, f"row {row.id} has no operation that could have made it", [], [row])
    counts["no_effect"] += sum(unanswered.values())


def check_settle_answer(h, op, counts):
    """A confirm's or cancel's answer agrees with the final status of its purchase."""
    row = h.by_id.get(op.purchase_id)
    if op.code == UNKNOWN:
        took_effect = (row is not None and row.status == TARGET_STATUS[op.kind] and row.settled is not None
                       and row.settled >= op.invoked - h.tolerance)
        counts["took_effect" if took_effect else "no_effect"] += 1
        return
    counts["settle_answers"] += 1
    if op.code == "purchase_not_found":
        # Right for another buyer's purchase, or for one not yet made when this was decided.
        if row is not None and row.user_id == op.user_id and row.answered < op.invoked:
            h.violation(1, f"{op.kind} answered purchase_not_found for purchase {row.id} of its own buyer, "
                           "acknowledged before it was sent", row.sellers + [op], [row])
        return
    if op.code not in SETTLE_CODES:
        return  # refused before the purchase was looked at: a bad token or request
    status = SETTLED_BY.get((op.kind, op.code))
    if row is None or row.user_id != op.user_id:
        h.violation(1, f"{op.kind} answered {op.code} for purchase {op.purchase_id}, "
                       "which is not this buyer's", [op], [row] if row else [])
    elif status and row.status != status:
        h.violation(1, f"{op.kind} answered {op.code}, but purchase {row.id} ended {row.status}", [op], [row])
    elif status and op.code == "ok" and (op.answer.body or {}).get("status", status) != status:
        h.violation(1, f"{op.kind} answered 200 with status {op.answer.body.get('status')!r}", [op], [row])
    elif op.code == "late" and row.status not in RELEASED:
        h.violation(1, f"a payment answered late, but purchase {row.id} ended {row.status}", [op], [row])
    elif op.code == "hold_expired" and row.status in TARGET_STATUS.values() and row.settle_proven < op.invoked:
        h.violation(1, f"{op.kind} answered hold_expired, but purchase {row.id} was {row.status} by an "
                       "answer completed before it was sent", [op] + settles_of(h, row), [row])


def settles_of(h, row):
    return h.settles_by_purchase.get(row.id, [])


# --- Check 2: stock - remaining = active units, no buyer over the limit ------------------------

def check_conservation_and_limit(h):
    active = sum(row.quantity for row in h.rows if row.status in ACTIVE)
    oversold = [row for row in h.rows if row.remaining_after < 0]
    if h.remaining < 0 or oversold:
        h.violation(2, f"oversold: remaining {min([h.remaining] + [row.remaining_after for row in oversold])}",
                    [op for row in oversold[:1] for op in row.sellers], oversold[:1])
    if h.stock - h.remaining != active:
        h.violation(2, f"stock {h.stock} - remaining {h.remaining} = {h.stock - h.remaining} units out, "
                       f"but the rows hold {active} active units (confirmed or held)")
    if h.hold is None:
        for row in h.rows:
            if row.status != "confirmed" or row.expires is not None:
                h.violation(2, f"row {row.id} of an item sold at once is {row.status}"
                               f"{', with an expiry' if row.expires is not None else ''}", row.sellers, [row])
    check_limit_at_every_sale(h)
    return Counter(items=1, rows=len(h.rows))


def check_limit_at_every_sale(h):
    """When sale i was made, every earlier row of its buyer still counted against the limit,
    unless it was released by a transaction that may have had the lock before sale i: one that
    began (settled_at) before sale i's lock moment."""
    for user_id, indexes in group_by(range(len(h.rows)), lambda index: h.rows[index].user_id).items():
        kept = 0  # units of rows never released
        releasing, releasing_units = [], 0  # heap of (settled_at - tolerance, quantity): released later
        for position, index in enumerate(indexes):
            row = h.rows[index]
            while releasing and releasing[0][0] <= h.lock_before[index]:
                releasing_units -= heapq.heappop(releasing)[1]
            if kept + releasing_units + row.quantity > h.limit:
                earlier = [h.rows[i] for i in indexes[max(0, position - h.limit):position]]
                h.violation(2, f"{user_id!r} had {kept + releasing_units} active units (limit {h.limit}) "
                               f"when purchase {row.id} of {row.quantity} more was made",
                            row.sellers, earlier + [row])
            if row.released:
                heapq.heappush(releasing, (row.release_from, row.quantity))
                releasing_units += row.quantity
            else:
                kept += row.quantity


# --- Check 3: remaining order consistent with real time ----------------------------------------

def check_remaining_order(h):
    """Sale i reports remaining_after = stock - units sold up to it + R_i, the units released
    before it. R_i never decreases, and lies between what must have been released before the
    sale began and what can have been released before it took the lock. On an item sold at
    once both bounds are 0: remaining_after is exactly stock - units sold up to it."""
    check_sale_times(h)
    released = [row.remaining_after - (h.stock - units) for row, units in zip(h.rows, h.prefix_units)]
    possible, certain = release_bounds(h)
    told = {}  # remaining_after -> the first row that reported it
    for index, row in enumerate(h.rows):
        left = f"stock {h.stock} less the {h.prefix_units[index]} units sold up to it leaves " \
               f"{h.stock - h.prefix_units[index]}"
        same = [told[row.remaining_after]] if row.remaining_after in told else []  # two buyers told it
        told.setdefault(row.remaining_after, row)
        if released[index] > possible[index]:
            h.violation(3, f"purchase {row.id} reports remaining {row.remaining_after}, but {left}, and at most "
                           f"{possible[index]} units can have been released before it", row.sellers, same + [row])
        elif released[index] < certain[index]:
            h.violation(3, f"purchase {row.id} reports remaining {row.remaining_after}, but {left}, and at least "
                           f"{certain[index]} units had been released before it began", row.sellers, same + [row])
        elif index > 0 and released[index] < released[index - 1]:
            prior = h.rows[index - 1]
            h.violation(3, f"purchase {row.id} reports remaining {row.remaining_after}, so {released[index]} "
                           f"units released before it, fewer than the {released[index - 1]} released before "
                           f"purchase {prior.id}", prior.sellers + row.sellers, [prior, row])
    check_ids_follow_real_time(h)
    return Counter(purchases=len(h.rows), acknowledged=sum(row.answered < INFINITY for row in h.rows))


def release_bounds(h):
    """For each sale i, the units of earlier rows possibly, and certainly, released before it.
    Possibly: the release's transaction began at the row's settled_at and had the lock before
    sale i, so before lock_before[i]. Certainly: the hold had expired when sale i began (its
    now(); the least of this and later sales' created_at, so that the bound only grows), or a
    cancel had been acknowledged before sale i took the lock (lock_after[i])."""
    began = running(min, [row.created for row in reversed(h.rows)])[::-1]
    possible, certain = [], []
    maybe, maybe_units = [], 0  # heap of (settled_at - tolerance, quantity)
    expired, cancelled = [], []  # heaps of (expires_at + tolerance or settle_proven, row id, quantity)
    counted, certain_units = set(), 0
    for index in range(len(h.rows)):
        while maybe and maybe[0][0] <= h.lock_before[index]:
            maybe_units += heapq.heappop(maybe)[1]
        due = []
        while expired and expired[0][0] <= began[index]:
            due.append(heapq.heappop(expired))
        while cancelled and cancelled[0][0] < h.lock_after[index]:
            due.append(heapq.heappop(cancelled))
        for _, row_id, units in due:
            if row_id not in counted:
                counted.add(row_id)
                certain_units += units
        possible.append(maybe_units)
        certain.append(certain_units)
        row = h.rows[index]
        if row.released:
            heapq.heappush(maybe, (row.release_from, row.quantity))
            if row.expires is not None:
                heapq.heappush(expired, (row.expires + h.tolerance, row.id, row.quantity))
            if row.settle_proven < INFINITY:
                heapq.heappush(cancelled, (row.settle_proven, row.id, row.quantity))
    return possible, certain


def check_sale_times(h):
    """Each sale's transaction began (created_at) after its buyer sent it and before its 201."""
    for row in h.rows:
        if row.sellers and row.created < row.invoked - h.tolerance:
            h.violation(3, f"purchase {row.id} was made (created_at {h.at(row.created)}) before its buyer sent it",
                        row.sellers, [row])
        elif row.created > row.answered + h.tolerance:
            h.violation(3, f"purchase {row.id} was made (created_at {h.at(row.created)}) after its 201 came",
                        row.sellers, [row])


def check_ids_follow_real_time(h):
    """Ids are drawn under the item's row lock: a sale answered before another could have begun
    has the smaller id."""
    latest = None  # of the rows so far, the one whose sale took the lock last at the earliest
    for row in h.rows:
        if latest is not None and latest.lower > row.answered:
            h.violation(3, f"purchase {row.id} was answered at {h.at(row.answered)}, before purchase {latest.id} "
                           f"could have been made (not before {h.at(latest.lower)}), yet it has the larger id",
                        latest.sellers + row.sellers, [latest, row])
        if latest is None or row.lower > latest.lower:
            latest = row


# --- Check 4: every sold_out could have been true ----------------------------------------------

def check_sold_out(h):
    """A sold_out was decided in some gap k of the lock order, after sale k and before sale k+1,
    that real time allows. There it saw at least remaining_after of sale k (units released later
    only add), and at least the stock less the rows of sales 1..k it may have counted as active:
    a row expired before the sold_out was sent, or whose cancel was acknowledged by then, is
    back. Some allowed gap must leave fewer units than it asked for on both counts."""
    refusals = [op for op in h.buys if op.code == "sold_out"]
    if refusals:
        left = RangeMin([h.stock] + [row.remaining_after for row in h.rows])  # after 0..n sales
        full_from = first_gap_seen_full(h, refusals)
        for op in refusals:
            start, end = h.window(op)
            first = bisect.bisect_left(h.gap_before, start)
            last = bisect.bisect_right(h.gap_after, end) - 1
            fitting = max(first, full_from[id(op)])
            if fitting > last or left.min(fitting, last) >= op.quantity:
                rows = [h.rows[i] for i in sorted({first - 1, min(last, len(h.rows) - 1)}) if 0 <= i < len(h.rows)]
                h.violation(4, sold_out_explanation(h, op, first, last, left),
                            [op] + [seller for row in rows for seller in row.sellers], rows)
    return Counter(sold_out=len(refusals))


def first_gap_seen_full(h, refusals):
    """For each sold_out, the first gap k where the rows of sales 1..k that it may have counted
    as active (deadline not before it was sent) exceed stock - its quantity; len(rows) + 1 if
    none. A cached answer was decided by another request: every row counts. Sweeps the sold_outs
    by invoke time, latest first, adding rows to a Fenwick tree as their deadline allows."""
    result = {}
    counted = Fenwick(len(h.rows))
    by_deadline = sorted(range(len(h.rows)), key=lambda index: -h.rows[index].deadline)
    added = 0
    for op in sorted(refusals, key=lambda op: -op.invoked):
        if h.cached(op):
            result[id(op)] = bisect.bisect_right(h.sold_before, h.stock - op.quantity)
            continue
        while added < len(by_deadline) and h.rows[by_deadline[added]].deadline >= op.invoked:
            counted.add(by_deadline[added], h.rows[by_deadline[added]].quantity)
            added += 1
        gap = counted.shortest_prefix_over(h.stock - op.quantity)
        result[id(op)] = len(h.rows) + 1 if gap is None else gap
    return result


def sold_out_explanation(h, op, first, last, left):
    names = ["the first sale"] + [f"purchase {row.id}" for row in h.rows] + ["the end"]
    where = f"between {names[first]} and {names[last + 1]}" if first <= last else "nowhere"
    if first <= last and left.min(first, last) >= op.quantity:
        return (f"sold_out for {op.quantity} units, but real time places it {where}, where at least "
                f"{left.min(first, last)} units were left")
    back = [row.id for row in h.rows[:max(last, 0)] if row.deadline < op.invoked][:5]
    return (f"sold_out for {op.quantity} units, but real time places it {where}, and the holds that had "
            f"expired or been cancelled before it was sent (purchases {back}) left at least {op.quantity} there")


# --- Check 5: every limit_reached could have been true -----------------------------------------

def check_limit_reached(h):
    """A limit_reached was decided in some gap k of the lock order that real time allows, where
    its buyer had more than max_per_user - quantity active units, and the stock (checked first)
    still had the units it asked for. The buyer's units can only have come from its rows of
    sales 1..k that it may have counted as active (deadline not before it was sent), so k is at
    least the gap after the row that brings them over; the units left are at most the stock
    less the sales 1..k, plus every release that began before the answer. The earliest such k
    is the best for both. Per buyer, its refusals by invoke time, latest first, its rows added to
    a Fenwick tree as their deadline allows."""
    refusals = [op for op in h.buys if op.code == "limit_reached"]
    rows_of = group_by(range(len(h.rows)), lambda index: h.rows[index].user_id)
    releases = sorted((row.release_from, row.quantity) for row in h.rows if row.released)
    released_by = [0] + running(lambda a, b: a + b, [units for _, units in releases])
    for user_id, ops in group_by(refusals, lambda op: op.user_id).items():
        indexes = rows_of.get(user_id, [])
        by_deadline = sorted(range(len(indexes)), key=lambda mine: -h.rows[indexes[mine]].deadline)
        units, added = Fenwick(len(indexes)), 0
        for op in sorted(ops, key=lambda op: -op.invoked):
            while added < len(indexes) and h.rows[indexes[by_deadline[added]]].deadline >= op.invoked:
                units.add(by_deadline[added], h.rows[indexes[by_deadline[added]]].quantity)
                added += 1
            enough = units.shortest_prefix_over(h.limit - op.quantity)  # of the buyer's rows
            if enough is None:
                h.violation(5, f"limit_reached for {op.quantity} units, but {user_id!r} never had more than "
                               f"{units.sum_before(len(indexes))} units it could count as active (limit {h.limit})",
                            [op], [h.rows[index] for index in indexes])
                continue
            gap = indexes[enough - 1] + 1 if enough else 0
            if h.gap_after[gap] > op.answered:
                h.violation(5, f"limit_reached for {op.quantity} units, answered at {h.at(op.answered)}, but "
                               f"{user_id!r} reached {h.limit - op.quantity + 1} active units only with purchase "
                               f"{h.rows[gap - 1].id}, not before {h.at(h.gap_after[gap])}",
                            [op] + h.rows[gap - 1].sellers, [h.rows[index] for index in indexes])
                continue
            gap = max(gap, bisect.bisect_left(h.gap_before, op.invoked))
            most = h.stock - h.sold_before[gap] + released_by[bisect.bisect_right(releases, (op.answered, INFINITY))]
            if most < op.quantity:
                h.violation(5, f"limit_reached for {op.quantity} units, but whenever {user_id!r} could have been "
                               f"at the limit at most {most} units were left: the answer was sold_out",
                            [op], [h.rows[index] for index in indexes])
    return Counter(limit_reached=len(refusals))


# --- Check 6: answers agree, holds settle in time ----------------------------------------------

def check_agreement_and_holds(h):
    for op in h.operations:
        check_answers_agree(h, op)
    if h.hold is not None:
        for row in h.rows:
            check_hold_row(h, row)
        for op in h.settles:
            check_settle_timing(h, op)
        check_every_settlement_has_an_operation(h)
    return Counter(operations=len(h.operations), confirms=sum(op.kind == "confirm" for op in h.operations),
                   payments=sum(op.kind == "pay" for op in h.operations),
                   late=sum(op.kind == "pay" and op.code == "late" for op in h.operations),
                   cancels=sum(op.kind == "cancel" for op in h.operations),
                   expired=sum(row.status == "expired" for row in h.rows))


def check_answers_agree(h, op):
    """Every definite answer of one operation says the same: a replayed 201 the original body."""
    answers = [attempt for attempt in op.attempts if attempt.definite]
    for later in answers[1:]:
        first = answers[0]
        if later.status != first.status or (later.body != first.body if first.status < 300
                                            else later.code != first.code):
            h.violation(6, f"two definite answers of one {op.kind} disagree", [op])
            return


def check_hold_row(h, row):
    """settled_at is the now() of the transaction that settled the hold: a confirm or cancel
    decided before its expiry, an expiry at or after it. No hold is still held past its expiry
    after the final sweep."""
    if row.expires is None or abs(row.expires - (row.created + h.hold)) > DATABASE_PRECISION_SECONDS:
        problem = f"has expires_at {h.at(row.expires) if row.expires else None}, not created_at + {h.hold} s"
    elif row.status == "held" and row.settled is not None:
        problem = "is held but has a settled_at"
    elif row.status == "held" and row.expires + h.tolerance < h.settings.swept_at:
        problem = (f"is still held at the final sweep, {h.settings.swept_at - row.expires:.3f} s past its "
                   "expiry: it never expired")
    elif row.status in TARGET_STATUS.values() and (row.settled is None or row.settled >= row.expires):
        problem = f"was {row.status} at or after its expiry"
    elif row.status == "expired" and (row.settled is None or row.settled < row.expires):
        problem = "expired before its expires_at"
    elif row.status not in ACTIVE | RELEASED:
        problem = f"has the unknown status {row.status!r}"
    else:
        return
    h.violation(6, f"hold {row.id} {problem}", row.sellers + settles_of(h, row), [row])


def check_settle_timing(h, op):
    """A hold_expired comes after the expiry; a confirm's or cancel's answer after the settlement."""
    row = h.by_id.get(op.purchase_id)
    if row is None or row.user_id != op.user_id or op.code == UNKNOWN:
        return
    if op.code == "late" and row.status == "expired" and row.expires > op.answered + h.tolerance:
        h.violation(6, f"a payment answered late at {h.at(op.answered)}, before hold {row.id} expired at "
                       f"{h.at(row.expires)}", [op], [row])
    elif op.code == "hold_expired" and row.expires is not None and row.expires > op.answered + h.tolerance:
        h.violation(6, f"{op.kind} answered hold_expired at {h.at(op.answered)}, before hold {row.id} "
                       f"expired at {h.at(row.expires)}", [op], [row])
    elif SETTLED_BY.get((op.kind, op.code)) == row.status and row.settled is not None \
            and row.settled > op.answered + h.tolerance:
        h.violation(6, f"{op.kind} answered {op.code} at {h.at(op.answered)}, before purchase {row.id} "
                       f"was {row.status} at {h.at(row.settled)}", [op], [row])


def check_every_settlement_has_an_operation(h):
    """A confirmed or cancelled hold was settled by a payment (or a buyer's confirm) or a cancel of
    its buyer, answered so (200 ok) or not at all, during which its settled_at lies."""
    for row in h.rows:
        kinds = SETTLING_KINDS.get(row.status)
        if kinds is None or row.settled is None:
            continue
        kind = " or ".join(sorted(kinds))
        if not any(op.kind in kinds and op.user_id == row.user_id and op.code in {"ok", UNKNOWN}
                   and op.invoked - h.tolerance <= row.settled <= op.answered + h.tolerance
                   for op in settles_of(h, row)):
            h.violation(6, f"hold {row.id} is {row.status}, but no {kind} could have done it at "
                           f"{h.at(row.settled)}", settles_of(h, row), [row])


# --- Putting it together -----------------------------------------------------------------------

CHECK_FUNCTIONS = {1: check_answers_match_rows, 2: check_conservation_and_limit, 3: check_remaining_order,
                   4: check_sold_out, 5: check_limit_reached, 6: check_agreement_and_holds}


LINES = {
    1: "{acknowledged} acknowledged purchases, {refused} refused, {settle_answers} pay/confirm/cancel answers, "
       "unknown: {took_effect} took effect, {no_effect} did not",
    2: "{items} items, {rows} rows",
    3: "{purchases} purchases ({acknowledged} acknowledged)",
    4: "{sold_out} sold_out",
    5: "{limit_reached} limit_reached",
    6: "{operations} operations, {confirms} confirms, {payments} payment deliveries ({late} late), {cancels} cancels, "
       "{expired} expired holds",
}


def check(operations, items, rows, wall_minus_monotonic, cache_seconds=0.0, tolerance=TOLERANCE_SECONDS,
          swept_at=None):
    """Check a recorded history against the database after the run.

    `items`: dicts {id, stock, remaining, max_per_user, hold_seconds (None: sold at once)};
    `rows`: every purchase of those items, {id, item_id, user_id, quantity, idempotency_key,
    remaining_after, status, expires_at, settled_at, created_at}, datetimes timezone-aware
    (status defaults to 'confirmed', expires_at and settled_at to None). `wall_minus_monotonic`:
    time.time() - time.monotonic() where the history was recorded. `cache_seconds`: the
    service's SOLD_OUT_CACHE_SECONDS. `swept_at`: time.monotonic() when the final sweep of
    expired holds began (default: the history's last answer). `tolerance`: how far a database
    timestamp may be off the monotonic clock."""
    operations = [op for op in operations if op.attempts]
    unknown_kinds = {op.kind for op in operations} - KINDS
    if unknown_kinds:
        raise ValueError(f"unknown operation kinds: {sorted(unknown_kinds)}")
    origin = min((op.invoked for op in operations), default=0.0)
    if swept_at is None:
        swept_at = max((attempt.complete for op in operations for attempt in op.attempts), default=-INFINITY)
    settings = Settings(tolerance, cache_seconds, swept_at, origin, wall_minus_monotonic)
    # A key is the buyer's, whatever the item: a reused key is answered 422 on any item.
    key_groups = group_by([op for op in operations if op.kind == "buy" and op.key is not None],
                          lambda op: (op.user_id, op.key))
    ops_by_item = group_by(operations, lambda op: op.item_id)
    rows_by_item = group_by([Row.from_dict(row, wall_minus_monotonic) for row in rows], lambda row: row.item_id)
    totals = {number: Counter() for number in CHECKS}
    violations = []
    for item in items:
        h = ItemHistory(item, ops_by_item.get(item["id"], []), rows_by_item.get(item["id"], []),
                        key_groups, settings)
        for number, check_item in CHECK_FUNCTIONS.items():
            totals[number] += check_item(h)
        violations += h.violations
    violations.sort(key=lambda violation: violation.check)
    lines = [f"history: {number}. {title}: {LINES[number].format_map(totals[number])}, "
             f"{sum(v.check == number for v in violations)} violations" for number, title in CHECKS.items()]
    return Report(lines, violations, origin)
