"""Prometheus metrics: the instruments, their updates, and what a scrape of /metrics answers.

Under gunicorn each worker writes its figures to files of its own in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode), and a scrape, served by whichever worker, adds up the
files of all of them. prometheus_client chooses that mode when it is first imported, from the
environment, so it is imported here only by start(): the master sets the variable
(prepare_directory) before it forks the workers, which start() their instruments after the fork.
Without the variable (Flask's test client, `flask run`) the figures are the process's own.

Counting is on every buyer's path, and each prometheus_client update takes a lock and writes
the file, so a counter is first added up in a dictionary of the process; flush() writes what was
added since the last flush: under gunicorn a thread of each worker flushes every second
(observe.flush_every), a scrape flushes the serving worker first, and a worker flushes once more
as it exits. So a scrape may lag a busy worker by up to a second, and a worker killed outright
loses at most that much. The duration histogram is added up the same way, as the values it is
made of: its sum and one count per bucket.

Until start() runs, and when metrics are off, every update is a no-op.
"""
import bisect
import glob
import ipaddress
import os
import threading

PURCHASE_OUTCOMES = ("sold", "replayed", "idempotency_key_reused", "item_not_found", "sale_not_started",
                     "sale_ended", "sold_out", "limit_reached", "unavailable")
# Retry reasons by the name of the exception's class or of a base class (db.TRANSIENT).
RETRY_REASONS = {"SerializationFailure": "serialization_failure", "DeadlockDetected": "deadlock",
                 "UniqueViolation": "unique_violation", "CommitCutOff": "commit_cut_off",
                 "DeadlinePassed": "deadline_passed", "OperationalError": "connection_lost"}
HOLD_EVENTS = ("made", "confirmed", "cancelled", "expired")
# What a Stripe webhook delivery did: the outcomes of apply_payment_event.sql, and `rejected` (400).
WEBHOOK_OUTCOMES = ("confirmed", "duplicate", "late", "refund_due", "under_review", "cancelled", "ignored",
                    "rejected")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_on = None  # the instruments once start() ran with metrics on


class Instruments:
    def __init__(self, pool_stats):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series say when a worker started: noise here
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.purchases = Counter("flashsale_purchases", "Purchase attempts answered, by outcome of "
                                 "buy_ticket.sql (sold_out includes the fast path's)", ["outcome"],
                                 registry=registry)
        self.units_sold = Counter("flashsale_units_sold", "Units sold", ["item_id"], registry=registry)
        self.requests = Counter("flashsale_http_requests", "HTTP requests answered by the app",
                                ["route", "status"], registry=registry)
        self.duration = Histogram("flashsale_request_duration_seconds", "Time the app took to answer",
                                  ["route"], buckets=DURATION_BUCKETS, registry=registry)
        self.retries = Counter("flashsale_db_retries", "Transactions run again after a transient failure",
                               ["reason"], registry=registry)
        self.unavailable = Counter("flashsale_unavailable", "Requests answered 503: no database answer "
                                   "within the budget", ["reason"], registry=registry)
        self.holds = Counter("flashsale_holds", "Holds made, confirmed, cancelled and expired (the "
                             "units of expired ones back on sale)", ["event"], registry=registry)
        # Read from the database at each scrape: the same figure whichever worker answers.
        self.units_held = Gauge("flashsale_units_held", "Units held now by holds not yet paid for "
                                "nor expired", ["item_id"], multiprocess_mode="mostrecent", registry=registry)
        self.webhook_events = Counter("flashsale_webhook_events", "Stripe webhook deliveries, by event "
                                      "type (unverified for a rejected one) and outcome", ["type", "outcome"],
                                      registry=registry)
        # Read from the database at each scrape, as the units held.
        self.payments = Gauge("flashsale_payments_amount", "Money in minor units, by item, currency and "
                              "payment state: paid (confirmed a hold), refund_due (owed back), refunded, "
                              "under_review", ["item_id", "currency", "status"], multiprocess_mode="mostrecent",
                              registry=registry)
        self.cache_hits = Counter("flashsale_sold_out_cache_hits", "sold_out answered from the "
                                  "worker's memory, without the database", registry=registry)
        # The pools' figures, added up over the live workers (a dead worker's pool is gone).
        self.pool_connections = Gauge("flashsale_pool_connections", "Connections open in the pools",
                                      multiprocess_mode="livesum", registry=registry)
        self.pool_idle = Gauge("flashsale_pool_connections_idle", "Connections idle in the pools",
                               multiprocess_mode="livesum", registry=registry)
        self.pool_waiting = Gauge("flashsale_pool_requests_waiting", "Requests waiting for a connection",
                                  multiprocess_mode="livesum", registry=registry)
        self.pool_requests = Counter("flashsale_pool_requests", "Connections asked of the pools",
                                     registry=registry)
        self.pool_wait = Counter("flashsale_pool_wait_seconds", "Time spent waiting for a connection",
                                 registry=registry)
        self.pool_timeouts = Counter("flashsale_pool_timeouts", "Requests for a connection that timed out",
                                     registry=registry)
        self.pool_lost = Counter("flashsale_pool_connections_lost", "Connections found broken or lost",
                                 registry=registry)
        # 1 while a commit is acknowledged only once a standby has it, 0 while the primary commits
        # alone (pg_auto_failover's standby is away); read at each scrape and each /readyz.
        self.replication = Gauge("flashsale_replication_synchronous", "1: commits wait for a synchronous "
                                 "standby; 0: the primary commits alone", multiprocess_mode="mostrecent",
                                 registry=registry)
        # Labelled children looked up once: labels() takes a lock and validates on every call.
        self.request_children = {}
        self.purchase_children = {outcome: self.purchases.labels(outcome) for outcome in PURCHASE_OUTCOMES}
        self.units_children = {}
        self.hold_children = {event: self.holds.labels(event) for event in HOLD_EVENTS}
        self.counted = {}  # counter child -> all this process counted; only add() writes here
        self.written = {}  # counter child -> the part of it flush() has written
        self.flush_lock = threading.Lock()  # a scrape and the flush thread may both flush
        self.pool_stats = pool_stats


def start(enabled, pool_stats=None):
    """Create this process's instruments (once), or turn updates off. `pool_stats` returns
    psycopg_pool's pop_stats(), which each flush copies."""
    global _on
    if not enabled:
        _on = None
    elif _on is None:
        _on = Instruments(pool_stats)


def add(child, amount=1):
    """Count on a counter child: a dictionary update, written by the next flush()."""
    counted = _on.counted
    counted[child] = counted.get(child, 0) + amount


def flush():
    """Write what was counted since the last flush, and the pool's figures, to prometheus_client.
    The request thread may add() meanwhile: dict.copy() is atomic, and what it misses is
    written by the next flush."""
    if _on is None:
        return
    with _on.flush_lock:
        for child, total in _on.counted.copy().items():
            new = total - _on.written.get(child, 0)
            if new:
                child.inc(new)
                _on.written[child] = total
        if _on.pool_stats is not None:
            pool(_on.pool_stats())


def enabled():
    return _on is not None


def request(route, status, seconds):
    """One answer of the app: its route (the URL rule, bounded in number) and status."""
    if _on is None:
        return
    children = _on.request_children.get((route, status))
    if children is None:
        # observe() writes the histogram's sum and one bucket to the file at once, which cost a
        # share of sold-out answers/s (docs/performance.md): here they are added up as counters
        # are, the values taken from the child (prometheus_client 0.26: _sum, and _buckets, one per
        # bound of DURATION_BUCKETS and a last for +Inf; tests/test_observe.py reads them back).
        duration = _on.duration.labels(route)
        children = _on.request_children[(route, status)] = (
            _on.requests.labels(route, str(status)), duration._sum, duration._buckets)
    counter, duration_sum, buckets = children
    add(counter)
    add(duration_sum, seconds)
    add(buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)])  # the first bound >= seconds


def purchase(outcome, item_id, quantity):
    if _on is None:
        return
    child = _on.purchase_children.get(outcome)
    add(child if child is not None else _on.purchases.labels(outcome))
    if outcome == "sold":
        units = _on.units_children.get(item_id)
        if units is None:
            units = _on.units_children[item_id] = _on.units_sold.labels(str(item_id))
        add(units, quantity)


def hold_event(event, count=1):
    """A hold "made", "confirmed", "cancelled" or "expired" (by this worker's purchases)."""
    if _on is not None:
        add(_on.hold_children[event], count)


def holds_swept(count):
    """Holds the sweeper thread expired: written at once, since add() is the request thread's."""
    if _on is not None:
        _on.hold_children["expired"].inc(count)


def units_held(by_item):
    """Record db.units_held(): {item id: units held now} for every item with a payment window."""
    if _on is not None:
        for item_id, units in by_item.items():
            _on.units_held.labels(str(item_id)).set(units)


def db_event(event, detail=None):
    """What db.py reports (db.configure's `reporter`): "unavailable" with its reason, "retry" with
    the exception, "sold_out_cache_hit"."""
    if event == "unavailable":
        unavailable(detail)
    elif event == "retry":
        db_retry(detail)
    elif event == "sold_out_cache_hit":
        sold_out_cache_hit()


def webhook_event(event_type, outcome):
    if _on is not None:
        add(_on.webhook_events.labels(event_type, outcome))


def payment_totals(rows):
    """The gauges of money per item, currency and state: rows of payment_totals.sql."""
    if _on is not None:
        for row in rows:
            _on.payments.labels(str(row["item_id"]), row["currency"], row["payment_status"]).set(row["amount"])


def sold_out_cache_hit():
    if _on is not None:
        add(_on.cache_hits)


def db_retry(exc):
    if _on is not None:
        names = (cls.__name__ for cls in type(exc).__mro__)
        add(_on.retries.labels(next((RETRY_REASONS[n] for n in names if n in RETRY_REASONS), "other")))


def unavailable(reason):
    """A 503: "pool_timeout", "statement_timeout", "database_unreachable", "deadline_passed" or
    "retries_exhausted"."""
    if _on is not None:
        add(_on.unavailable.labels(reason))


def replication(mode):
    """Record db.ping()'s answer: 'synchronous', 'async', or None (no answer: left as it was)."""
    if _on is not None and mode is not None:
        _on.replication.set(1 if mode == "synchronous" else 0)


def pool(stats):
    """Record psycopg_pool's pop_stats(): its gauges as they are, its counters since the last call."""
    if _on is None or not stats:
        return
    _on.pool_connections.set(stats.get("pool_size", 0))
    _on.pool_idle.set(stats.get("pool_available", 0))
    _on.pool_waiting.set(stats.get("requests_waiting", 0))
    _on.pool_requests.inc(stats.get("requests_num", 0))
    _on.pool_wait.inc(stats.get("requests_wait_ms", 0) / 1000)
    _on.pool_timeouts.inc(stats.get("requests_errors", 0))
    _on.pool_lost.inc(stats.get("connections_lost", 0))


def allowed(address, networks):
    """True when the client's address is in one of `networks`; no address is refused."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def exposition():
    """(body, content type) of a scrape: every worker's figures under gunicorn, else this process's."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = _on.registry
    return generate_latest(registry), CONTENT_TYPE_LATEST


# The gunicorn master's part.

def prepare_directory(path):
    """Make the metrics directory, empty of an earlier run's files, and have the workers use it."""
    os.makedirs(path, exist_ok=True)
    remove_files(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def mark_dead(pid):
    """Drop a dead worker's live gauges; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def remove_directory(path):
    """At the master's exit: this run's files, and the directory if nothing else is in it."""
    remove_files(path)
    try:
        os.rmdir(path)
    except OSError:
        pass


def remove_files(path):
    """Only the files prometheus_client writes: the directory may be shared with others."""
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
