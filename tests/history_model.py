"""A model of one item's sale, to test history.py against: a simulated service that makes
histories (correct, or with one fault), a brute-force search for a serial order that explains a
history, and a small builder of hand-written histories.

The search shares nothing with history.py but the Operation and Attempt it reads: it replays the
service's rules (docs/history.md) over every order of the events that real time allows."""
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

from verify import history
from verify.history import INFINITY, UNKNOWN, Attempt, Operation

OFFSET = 1_700_000_000.0  # wall_minus_monotonic of the simulated histories
START = 1000.0  # the monotonic clock when a simulated run begins
PRECISION = 0.001  # a body's expires_at against its row's


def exact(seconds):
    """Times rounded to the microsecond, as the database keeps them, so that the simulated
    service compares what the checker will read."""
    return round(seconds, 6)


def wall(seconds):
    return datetime.fromtimestamp(seconds + OFFSET, tz=timezone.utc) if seconds is not None else None


def monotonic(value):
    return value.timestamp() - OFFSET if value is not None else None


# --- The brute-force search --------------------------------------------------------------------

@dataclass
class Event:
    """One transaction to place in the lock order: an operation's decision, or a hold's expiry."""
    number: int
    op: Operation | None
    row: int | None  # the expiring row's index
    start: float
    end: float
    mandatory: bool


class Search:
    """Is there a serial order of the item's transactions, each at a moment inside its window,
    the moments never decreasing, that gives every definite answer, every row, and the item's
    final remaining? Depth-first over the orders, remembering the dead states."""

    def __init__(self, operations, item, rows, cache_seconds=0.0, tolerance=0.005, swept_at=None):
        self.stock, self.limit, self.hold = item["stock"], item["max_per_user"], item.get("hold_seconds")
        self.remaining = item["remaining"]
        self.cache_seconds, self.tolerance = cache_seconds, tolerance
        self.operations = [op for op in operations if op.attempts]
        self.swept_at = swept_at if swept_at is not None else max(
            (a.complete for op in self.operations for a in op.attempts), default=-INFINITY)
        self.rows = sorted(({**row, "created": monotonic(row["created_at"]),
                             "expires": monotonic(row.get("expires_at")),
                             "settled": monotonic(row.get("settled_at")),
                             "status": row.get("status") or "confirmed"} for row in rows), key=lambda r: r["id"])
        self.index_of = {row["id"]: index for index, row in enumerate(self.rows)}
        self.keyed = {(op.user_id, op.key) for op in self.operations if op.kind == "buy" and op.key}
        self.events = self.make_events()
        self.dead = set()

    def make_events(self):
        events = []
        for op in self.operations:
            start = op.invoked
            if op.kind == "buy" and op.key is None and self.cache_seconds > 0 and op.code == "sold_out":
                start -= self.cache_seconds + self.tolerance
            events.append(Event(len(events), op, None, start, op.answered, op.code != UNKNOWN))
        for index, row in enumerate(self.rows):
            if row["status"] == "expired":
                events.append(Event(len(events), None, index, -INFINITY, INFINITY, True))
        return events

    def explains(self):
        return self.rows_are_sound() and self.answers_agree() and self.place(0, -INFINITY, (None,) * len(self.rows))

    # The facts that need no order.

    def answers_agree(self):
        for op in self.operations:
            answers = [a for a in op.attempts if a.definite]
            for later in answers[1:]:
                if later.status != answers[0].status:
                    return False
                if later.status < 300 and later.body != answers[0].body:
                    return False
                if later.status >= 300 and later.code != answers[0].code:
                    return False
        return True

    def rows_are_sound(self):
        keys = [(row["user_id"], row["idempotency_key"]) for row in self.rows]
        if len(set(keys)) != len(keys):
            return False
        for row in self.rows:
            status, expires, settled = row["status"], row["expires"], row["settled"]
            if self.hold is None:
                if status != "confirmed" or expires is not None:
                    return False
                continue
            if expires is None or abs(expires - row["created"] - self.hold) > PRECISION:
                return False
            if status == "held" and (settled is not None or expires + self.tolerance < self.swept_at):
                return False
            if status in ("confirmed", "cancelled") and (settled is None or settled >= expires):
                return False
            if status == "expired" and (settled is None or settled < expires):
                return False
            if status not in ("held", "confirmed", "cancelled", "expired"):
                return False
        return True

    # The search.

    def place(self, placed, at, statuses):
        if self.done(placed, statuses):
            return True
        state = (placed, at, statuses)
        if state in self.dead:
            return False
        self.dead.add(state)
        for event in self.events:
            if placed >> event.number & 1:
                continue
            for after, lower in self.outcomes(event, statuses):
                moment = max(at, event.start, lower)
                if moment > event.end:
                    continue
                now_placed = placed | 1 << event.number
                if any(e.mandatory and not now_placed >> e.number & 1 and e.end < moment for e in self.events):
                    continue  # an event that must come is left no moment
                if self.place(now_placed, moment, after):
                    return True
        return False

    def done(self, placed, statuses):
        if any(e.mandatory and not placed >> e.number & 1 for e in self.events):
            return False
        if any(status != row["status"] for status, row in zip(statuses, self.rows)):
            return False
        active = sum(row["quantity"] for row in self.rows if row["status"] in ("held", "confirmed"))
        return self.remaining == self.stock - active

    def outcomes(self, event, statuses):
        """What placing the event next can do: a list of (statuses after, earliest moment)."""
        if event.op is None:
            row = self.rows[event.row]
            if statuses[event.row] != "held":
                return []
            return [(replace(statuses, event.row, "expired"), row["settled"] - self.tolerance)]
        if event.op.kind == "buy":
            return self.buy(event.op, statuses)
        return self.settle(event.op, statuses)

    def active(self, statuses, user_id=None):
        return sum(row["quantity"] for row, status in zip(self.rows, statuses)
                   if status in ("held", "confirmed") and user_id in (None, row["user_id"]))

    def unexpired(self, statuses, t):
        """A buy decided at now() t saw no held row already expired: it would have expired it."""
        return all(t < row["expires"] + self.tolerance for row, status in zip(self.rows, statuses) if status == "held")

    def buy(self, op, statuses):
        unchanged = [(statuses, -INFINITY)]
        sold = sum(status is not None for status in statuses)
        if op.key is not None:
            earlier = [row for row in self.rows[:sold] if (row["user_id"], row["idempotency_key"]) == (op.user_id, op.key)]
            if earlier:  # a replay, or the key reused for another purchase
                if op.code == "ok":
                    return unchanged if earlier[0]["quantity"] == op.quantity and self.body_fits(op, earlier[0]) else []
                return unchanged if op.code == "idempotency_key_reused" and earlier[0]["quantity"] != op.quantity else []
        if op.code not in ("ok", "sold_out", "limit_reached", UNKNOWN):
            return unchanged  # refused for reasons this model does not know (a sale window, a token)
        available = self.stock - self.active(statuses)
        if op.key is None and self.cache_seconds > 0 and op.code == "sold_out":
            return unchanged if available < op.quantity else []  # an earlier answer's memory
        if available < op.quantity:
            outcome = "sold_out"
        elif self.active(statuses, op.user_id) + op.quantity > self.limit:
            outcome = "limit_reached"
        else:
            return self.sell(op, statuses, sold, available)
        return unchanged if op.code == outcome and self.unexpired(statuses, op.invoked) else []

    def sell(self, op, statuses, sold, available):
        if op.code not in ("ok", UNKNOWN) or sold == len(self.rows):
            return []
        row = self.rows[sold]  # ids are drawn in lock order
        if (row["user_id"], row["quantity"]) != (op.user_id, op.quantity):
            return []
        if op.key is not None and row["idempotency_key"] != op.key:
            return []
        if op.key is None and (row["user_id"], row["idempotency_key"]) in self.keyed:
            return []
        if op.code == "ok" and not self.body_fits(op, row):
            return []
        if row["created"] < op.invoked - self.tolerance or not self.unexpired(statuses, row["created"]):
            return []
        if row["remaining_after"] != available - op.quantity:
            return []
        status = "held" if self.hold is not None else "confirmed"
        return [(replace(statuses, sold, status), row["created"] - self.tolerance)]

    def body_fits(self, op, row):
        body = op.answer.body or {}
        expected = {"purchase_id": row["id"], "item_id": row["item_id"], "user_id": row["user_id"],
                    "quantity": row["quantity"], "remaining": row["remaining_after"]}
        if any(body.get(name) != value for name, value in expected.items()):
            return False
        if self.hold is None:
            return body.get("status", "confirmed") == "confirmed"
        try:
            stated = monotonic(datetime.fromisoformat(body.get("expires_at")))
        except (TypeError, ValueError):
            return False
        return body.get("status") == "held" and abs(stated - row["expires"]) <= PRECISION

    def settle(self, op, statuses):
        unchanged = [(statuses, -INFINITY)]
        index = self.index_of.get(op.purchase_id)
        if op.code not in ("ok", "purchase_not_found", "purchase_cancelled", "purchase_confirmed",
                           "hold_expired", UNKNOWN):
            return unchanged
        if index is None or statuses[index] is None or self.rows[index]["user_id"] != op.user_id:
            return unchanged if op.code == "purchase_not_found" else []
        row, status = self.rows[index], statuses[index]
        target = {"confirm": "confirmed", "cancel": "cancelled"}[op.kind]
        if op.code == "ok" and (op.answer.body or {}).get("status", target) != target:
            return []
        if status == "held":
            outcomes = []
            if row["status"] == target and op.code in ("ok", UNKNOWN) \
                    and op.invoked - self.tolerance <= row["settled"] <= op.answered + self.tolerance:
                outcomes.append((replace(statuses, index, target), row["settled"] - self.tolerance))
            if op.code == "hold_expired":  # decided at a now() past the expiry, the row not yet expired
                outcomes.append((statuses, row["expires"] - self.tolerance))
            return outcomes
        expected = {("confirm", "confirmed"): "ok", ("confirm", "cancelled"): "purchase_cancelled",
                    ("cancel", "confirmed"): "purchase_confirmed", ("cancel", "cancelled"): "ok"}
        return unchanged if op.code == expected.get((op.kind, status), "hold_expired") else []


def replace(values, index, value):
    return values[:index] + (value,) + values[index + 1:]


def explains(operations, item, rows, **options):
    return Search(operations, item, rows, **options).explains()


# --- The simulated service ---------------------------------------------------------------------

FAULTS = ["early_sold_out", "limit_early", "stale_remaining", "lost_row", "row_behind_refusal",
          "confirm_after_expiry", "double_return", "never_expire", "no_lazy_expiry", "expire_early",
          "oversell", "cancel_without_return"]
STATUS_OF = {"sold_out": 409, "limit_reached": 409, "hold_expired": 409, "purchase_cancelled": 409,
             "purchase_confirmed": 409, "purchase_not_found": 404, "idempotency_key_reused": 422}


@dataclass
class Step:
    """One operation as drawn: what it asks, and the times of its attempts, in milliseconds."""
    kind: str  # buy, confirm, cancel
    user: int
    quantity: int = 1
    keyed: bool = True
    target: int = -1  # confirm/cancel: the index of an earlier step, a buy whose purchase it settles
    gap: int = 10  # after the previous step was sent
    begin: int = 1  # its transaction's now() after it is sent
    wait: int = 5  # for the row lock
    reply: int = 2  # after the lock, until the answer
    fault: str = "none"  # "lost": answered nothing after its commit; "refused": 503 before the database
    retry: bool = True  # after a fault, try once more with the same key


@dataclass
class Plan:
    stock: int
    limit: int
    hold: float | None  # seconds
    steps: list
    sweeps: list = field(default_factory=list)  # ms after the start: a sweeper runs
    cache_seconds: float = 0.0


@dataclass
class Transaction:
    lock: float  # when it takes the lock: the order of the simulation
    now: float
    step: int
    attempt: int | None  # None: a sweeper


class Service:
    """The service's rules, run in lock order, with at most one fault turned on."""

    def __init__(self, plan, fault=None):
        self.plan, self.fault = plan, fault
        self.hold = plan.hold
        self.remaining = plan.stock
        self.rows = []  # dicts with monotonic times
        self.by_key = {}
        self.bodies = {}  # row id -> its first 201 body
        self.next_id = 1
        self.memory = []  # when answers saying "nothing left" came: a worker remembers them
        self.emptied = False  # the last decision left nothing
        self.rng = random.Random(len(plan.steps))

    # Expiry, lazily by buys and cancels, and by the sweepers.

    def expire(self, now):
        if self.fault == "never_expire" or self.hold is None:
            return
        cutoff = exact(now + (self.hold / 2 if self.fault == "expire_early" else 0))
        for row in self.rows:
            if row["status"] == "held" and row["expires"] <= cutoff:
                self.settle(row, "expired", now)

    def settle(self, row, status, now):
        row["status"], row["settled"] = status, now
        if status in ("cancelled", "expired"):
            returned = 0 if self.fault == "cancel_without_return" and status == "cancelled" else row["quantity"]
            self.remaining += returned * (2 if self.fault == "double_return" and status == "cancelled" else 1)

    def buy(self, op, now, invoked):
        key = (op.user_id, op.key) if op.key else None
        if key in self.by_key:
            row = self.by_key[key]
            if row["quantity"] == op.quantity:
                return 201, self.bodies[row["id"]]
            return self.problem("idempotency_key_reused")
        if op.key is None and self.remembers_sold_out(invoked):
            return None  # answered from memory, without a transaction
        if self.fault != "no_lazy_expiry":
            self.expire(now)
        available = self.remaining
        active = sum(r["quantity"] for r in self.rows if r["user_id"] == op.user_id and r["status"] in ("held", "confirmed"))
        short = available < op.quantity + (1 if self.fault == "early_sold_out" else 0)
        if short and not (self.fault == "oversell" and available >= 0):
            self.emptied = available == 0
            return self.problem("sold_out")
        if active + op.quantity > self.plan.limit - (1 if self.fault == "limit_early" else 0):
            return self.problem("limit_reached")
        row = self.make_row(op, now, available)
        self.emptied = row["remaining_after"] == 0
        if self.fault == "row_behind_refusal" and row["id"] % 3 == 0:
            return self.problem("sold_out")
        return 201, self.bodies[row["id"]]

    def make_row(self, op, now, available):
        self.next_id += self.rng.choice([0, 0, 0, 1])  # a rolled-back attempt skips an id
        reported = available - op.quantity + (1 if self.fault == "stale_remaining" and self.next_id % 2 else 0)
        row = {"id": self.next_id, "item_id": 1, "user_id": op.user_id, "quantity": op.quantity,
               "idempotency_key": op.key or f"server-{self.next_id}", "remaining_after": reported,
               "status": "held" if self.hold is not None else "confirmed", "created": now,
               "expires": exact(now + self.hold) if self.hold is not None else None, "settled": None}
        self.next_id += 1
        self.remaining -= op.quantity
        self.rows.append(row)
        self.by_key[(op.user_id, row["idempotency_key"])] = row
        body = {"purchase_id": row["id"], "item_id": 1, "user_id": op.user_id, "quantity": op.quantity,
                "remaining": reported}
        if self.hold is not None:
            body.update(status="held", expires_at=wall(row["expires"]).isoformat())
        self.bodies[row["id"]] = body
        return row

    def remembers_sold_out(self, invoked):
        return self.plan.cache_seconds > 0 and any(
            answered <= invoked < answered + self.plan.cache_seconds for answered in self.memory)

    def confirm_or_cancel(self, op, now):
        row = next((r for r in self.rows if r["id"] == op.purchase_id), None)
        if row is None or row["user_id"] != op.user_id:
            return self.problem("purchase_not_found")
        if row["status"] == "held":
            in_time = now < row["expires"] or (self.fault == "confirm_after_expiry" and op.kind == "confirm")
            if in_time:
                self.settle(row, "confirmed" if op.kind == "confirm" else "cancelled", now)
            elif op.kind == "cancel" and self.fault != "never_expire":
                self.settle(row, "expired", now)  # a cancel expires what it finds expired
            else:
                return self.problem("hold_expired")
        answer = {("confirm", "confirmed"): "ok", ("confirm", "cancelled"): "purchase_cancelled",
                  ("cancel", "confirmed"): "purchase_confirmed", ("cancel", "cancelled"): "ok"}
        code = answer.get((op.kind, row["status"]), "hold_expired")
        if code != "ok":
            return self.problem(code)
        return 200, {"purchase_id": row["id"], "item_id": 1, "user_id": row["user_id"],
                     "quantity": row["quantity"], "status": row["status"]}

    @staticmethod
    def problem(code):
        return STATUS_OF[code], {"type": f"/problems/{code}", "title": code, "status": STATUS_OF[code],
                                 "detail": "", "code": code}


def simulate(plan, fault=None):
    """Run the plan through the service. Returns (operations, item, rows, swept_at)."""
    service = Service(plan, fault)
    operations, transactions = schedule(plan)
    answers = {}  # step -> its first definite attempt, in lock order
    for tx in sorted(transactions, key=lambda tx: (tx.lock, tx.step)):
        if tx.attempt is None:
            service.expire(tx.now)  # a sweeper
            continue
        op = operations[tx.step]
        attempt = op.attempts[tx.attempt]
        if op.kind != "buy" and op.purchase_id is None:
            op.purchase_id = purchase_target(plan, answers, tx.step)
        service.emptied = False
        answer = service.buy(op, tx.now, attempt.invoke) if op.kind == "buy" else service.confirm_or_cancel(op, tx.now)
        if answer is None:  # from the sold-out memory: answered at once, no transaction
            attempt.complete = exact(attempt.invoke + 0.001)
            answer = service.problem("sold_out")
        if service.emptied:  # the worker remembers this item sold out, whether the client hears or not
            service.memory.append(attempt.complete)
        if attempt.status == -1:  # planned: the answer is lost after the commit
            attempt.status = None
        else:
            attempt.status, attempt.body = answer
            answers.setdefault(tx.step, attempt)
    swept_at = exact(max(a.complete for op in operations for a in op.attempts) + 0.05)
    service.expire(swept_at)  # the proof's final sweep
    rows = [finished_row(row) for row in service.rows]
    if fault == "lost_row":
        acknowledged = {a.body["purchase_id"] for op in operations if op.kind == "buy"
                        for a in op.attempts if a.status == 201}
        rows = [row for row in rows if row["id"] != min(acknowledged, default=None)]
    item = {"id": 1, "stock": plan.stock, "remaining": service.remaining, "max_per_user": plan.limit,
            "hold_seconds": plan.hold}
    return operations, item, rows, swept_at


def purchase_target(plan, answers, step):
    target = plan.steps[step].target
    answer = answers.get(target) if 0 <= target < step else None
    if answer is not None and answer.status == 201:
        return answer.body["purchase_id"]
    return 999  # no such purchase


def finished_row(row):
    return {**{k: v for k, v in row.items() if k not in ("created", "expires", "settled")},
            "created_at": wall(row["created"]), "expires_at": wall(row["expires"]), "settled_at": wall(row["settled"])}


def schedule(plan):
    """The operations with their attempts' times, and every transaction in lock order. A status
    of -1 marks an attempt whose answer will be lost; 503 one refused before the database."""
    operations, transactions = [], []
    sent = START
    for number, step in enumerate(plan.steps):
        sent = exact(sent + step.gap / 1000)
        user_id = f"u{step.user}"
        key = f"k{number}" if step.keyed or step.kind != "buy" else None
        op = Operation(step.kind, 1, user_id, key, step.quantity)
        invoke = sent
        if step.kind != "buy" and 0 <= step.target < number:
            invoke = max(invoke, exact(operations[step.target].attempts[-1].complete + step.gap / 1000))
        faults = [step.fault] + (["none"] if step.fault != "none" and step.retry and key else [])
        for attempt, fault in enumerate(faults):
            now = exact(invoke + step.begin / 1000)
            lock = exact(now + step.wait / 1000)
            if fault == "refused":
                op.attempts.append(Attempt(invoke, exact(invoke + step.reply / 1000), 503, {"code": "overloaded"}))
            else:
                op.attempts.append(Attempt(invoke, exact(lock + step.reply / 1000), -1 if fault == "lost" else 0, None))
                transactions.append(Transaction(lock, now, number, attempt))
            invoke = exact(op.attempts[-1].complete + 0.01)
        operations.append(op)
    for sweep in plan.sweeps:
        transactions.append(Transaction(exact(START + sweep / 1000), exact(START + sweep / 1000 - 0.0005), -1, None))
    return operations, transactions


# --- Hand-written histories --------------------------------------------------------------------

class Story:
    """A history written by hand, times in milliseconds from START: buys with their rows,
    confirms and cancels. check() and explains() take it as it stands."""

    def __init__(self, stock, limit=None, hold=None):
        self.item = {"id": 1, "stock": stock, "remaining": stock, "max_per_user": limit or stock,
                     "hold_seconds": hold}
        self.operations, self.rows = [], []

    def buy(self, user, sent, answered, status=201, code=None, quantity=1, key="auto", row=None):
        """A buy; with status 201, its row too: row= overrides the row's fields (created, status...)."""
        key = f"key-{len(self.operations)}" if key == "auto" else key
        op = Operation("buy", 1, user, key, quantity)
        self.operations.append(op)
        body = None
        if status == 201 or row is not None:
            fields = dict(row or {})
            created = fields.pop("created", (sent + answered) / 2)
            purchase_id = fields.pop("id", max((r["id"] for r in self.rows), default=0) + 1)
            remaining = fields.pop("remaining", self.item["remaining"] - quantity)
            self.item["remaining"] -= quantity
            stored = {"id": purchase_id, "item_id": 1, "user_id": user, "quantity": quantity,
                      "idempotency_key": key or f"server-{purchase_id}", "remaining_after": remaining,
                      "status": "held" if self.item["hold_seconds"] else "confirmed",
                      "created_at": wall(START + created / 1000), "expires_at": None, "settled_at": None}
            if self.item["hold_seconds"]:
                stored["expires_at"] = wall(START + created / 1000 + self.item["hold_seconds"])
            for name, value in fields.items():
                stored[name] = wall(START + value / 1000) if name in ("settled_at", "expires_at") else value
            self.rows.append(stored)
            body = {"purchase_id": purchase_id, "item_id": 1, "user_id": user, "quantity": quantity,
                    "remaining": remaining}
            if self.item["hold_seconds"]:
                body.update(status="held", expires_at=stored["expires_at"].isoformat())
        if status != 201 and status is not None:
            code = code or "sold_out"
            body = {"type": f"/problems/{code}", "title": code, "status": status, "detail": "", "code": code}
        op.attempts.append(Attempt(START + sent / 1000, START + answered / 1000, status, body))
        return op

    def settle(self, kind, user, purchase_id, sent, answered, status=200, code=None):
        op = Operation(kind, 1, user, f"key-{len(self.operations)}", purchase_id=purchase_id)
        self.operations.append(op)
        if status == 200:
            body = {"purchase_id": purchase_id, "item_id": 1, "user_id": user, "quantity": 1,
                    "status": "confirmed" if kind == "confirm" else "cancelled"}
        elif status is None:
            body = None
        else:
            body = {"type": f"/problems/{code}", "title": code, "status": status, "detail": "", "code": code}
        op.attempts.append(Attempt(START + sent / 1000, START + answered / 1000, status, body))
        return op

    def set_row(self, purchase_id, **fields):
        row = next(r for r in self.rows if r["id"] == purchase_id)
        for name, value in fields.items():
            row[name] = wall(START + value / 1000) if name in ("settled_at", "expires_at", "created_at") else value
        if fields.get("status") in ("cancelled", "expired"):
            self.item["remaining"] += row["quantity"]

    def check(self, **options):
        return history.check(self.operations, [self.item], self.rows, OFFSET, **options)

    def explains(self, **options):
        return explains(self.operations, self.item, self.rows, **options)
