"""Gunicorn settings: sync workers, each with its own connection pool opened after the fork.

Command-line flags (-b, -w, ...) and GUNICORN_CMD_ARGS override these."""
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

sys.path.insert(0, str(Path(__file__).parent))
load_dotenv(Path(__file__).parent / ".env", override=False)

import db  # noqa: E402  (after .env is loaded)

try:
    settings = db.load_settings()
    workers = db.number_from_env("WEB_CONCURRENCY", 3, int, 1)
except db.ConfigError as exc:
    sys.exit(f"Invalid configuration: {exc}")

wsgi_app = "app:app"
worker_class = "sync"
# Listen where API_URL points, unless BIND says otherwise.
_api = urlsplit(os.environ.get("API_URL", "http://127.0.0.1:8000"))
bind = os.environ.get("BIND") or f"{_api.hostname}:{_api.port or 80}"
# Well above DB_RETRY_BUDGET_SECONDS: a request answers 503 long before the worker is killed.
timeout = max(30, int(3 * settings.retry_budget))
graceful_timeout = 10
accesslog = None
control_socket_disable = True


def post_fork(server, worker):
    """Open the worker's pool and give it a moment to connect before the first request; a
    database that is down does not stop the worker, whose pool keeps trying."""
    try:
        db.open_pool().wait(timeout=5)
    except db.PoolTimeout:
        worker.log.warning("no database connection yet; the pool keeps trying")


def worker_exit(server, worker):
    db.close_pool()
