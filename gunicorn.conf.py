"""Gunicorn settings: sync workers, each with its own connection pool opened after the fork.

Command-line flags (-b, -w, ...) and GUNICORN_CMD_ARGS override these. gunicorn puts its
working directory (this one) on sys.path before it reads this file."""
import sys

import db
from flashsale import auth, metrics, observe, schema, sweeper
from flashsale import settings as configuration

settings = configuration.load_or_exit()
db.configure(settings)  # for the master's checks; each worker inherits it, and its app adds the metrics

wsgi_app = "app:app"
worker_class = "flashsale.worker.ProblemWorker"
workers = settings.web_concurrency
bind = settings.bind
# Well above DB_RETRY_BUDGET_SECONDS: a request answers 503 long before the worker is killed.
timeout = max(30, int(3 * settings.retry_budget))
graceful_timeout = 10
accesslog = None
control_socket_disable = True


def on_starting(server):
    """Before any worker starts: refuse a database whose schema is older than the code, in one
    line naming the command that upgrades it (a database that cannot be reached does not stop the
    service: the workers' pools keep trying); then make and empty the metrics directory, whose
    path the workers inherit in PROMETHEUS_MULTIPROC_DIR."""
    try:
        outdated = schema.check(settings.database_url)
    except db.psycopg.Error as exc:
        server.log.warning("could not check the database schema: %s", str(exc).strip().splitlines()[0])
        outdated = None
    if outdated:
        sys.exit(outdated)
    if settings.metrics:
        try:
            metrics.prepare_directory(settings.metrics_dir)
        except OSError as exc:
            sys.exit(f"Invalid configuration: PROMETHEUS_MULTIPROC_DIR {settings.metrics_dir!r}: {exc.strerror}")


def when_ready(server):
    """Warn once, in the master: in open mode, that buyers are not verified; and when the
    workers' pools together may ask for more connections than the database allows (the last
    ones to connect would be refused)."""
    if auth.mode(settings) == "open":
        server.log.warning(auth.OPEN_MODE_WARNING)
    wanted = settings.web_concurrency * (settings.pool_size + settings.max_overflow)
    try:
        available = db.available_connections()
    except db.psycopg.Error as exc:
        server.log.warning("could not read the database's connection limit: %s", str(exc).strip())
        return
    if wanted > available:
        server.log.warning(
            "WEB_CONCURRENCY x (DB_POOL_SIZE + DB_MAX_OVERFLOW) = %d connections, more than the %d "
            "the database allows (max_connections less the reserved ones)", wanted, available)


def child_exit(server, worker):
    if settings.metrics:
        metrics.mark_dead(worker.pid)


def on_exit(server):
    if settings.metrics:
        metrics.remove_directory(settings.metrics_dir)


def post_fork(server, worker):
    """Open the worker's pool and give it a moment to connect before the first request; a
    database that is down does not stop the worker, whose pool keeps trying."""
    try:
        db.open_pool().wait(timeout=db.FIRST_CONNECTION_WAIT_SECONDS)
    except db.PoolTimeout:
        worker.log.warning("no database connection yet; the pool keeps trying")


def post_worker_init(worker):
    """Once the worker has loaded the app: its log lines and counts are written in batches, about
    once a second (observe.py), and its sweeper expires holds (sweeper.py)."""
    observe.flush_every(observe.FLUSH_SECONDS)
    sweeper.sweep_every(settings.hold_sweep_seconds)


def worker_exit(server, worker):
    observe.flush()
    db.close_pool()
