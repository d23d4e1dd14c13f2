"""What every request leaves behind: its X-Request-ID, its metrics and, with ACCESS_LOG, a log line.

Observed wraps the Flask app as WSGI middleware. It runs for every buyer, so it reads the WSGI
environ and does nothing it was not asked to: no log record without ACCESS_LOG, no metric
without METRICS.
"""
import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone

import metrics

MAX_REQUEST_ID_LENGTH = 128
REQUEST_ID = re.compile(f"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")  # visible ASCII
REQUEST_ID_KEY = "flashsale.request_id"  # in the WSGI environ
CODE_KEY = "flashsale.code"  # the problem's `code`, set by app.problem_response
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"  # as gunicorn's own lines

access_logger = logging.getLogger("flashsale.access")
error_logger = logging.getLogger("flashsale.error")


def install(app, settings, pool_stats):
    """Observe every request of the Flask `app`; `pool_stats` returns psycopg_pool's pop_stats()."""
    metrics.start(settings.metrics, pool_stats)
    setup_logging(settings.log_format)
    app.wsgi_app = Observed(app.wsgi_app, settings.access_log)


class Observed:
    """WSGI middleware: the request id, in the environ and in every answer; the request's
    metrics; and its access log line."""

    def __init__(self, app, access_log):
        self.app = app
        self.access_log = access_log

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if request_id is None or REQUEST_ID.fullmatch(request_id) is None:
            request_id = os.urandom(16).hex()
        environ[REQUEST_ID_KEY] = request_id
        answer = []  # status, route

        def start_with_id(status, headers, exc_info=None):
            headers.append(("X-Request-ID", request_id))
            answer[:] = status, route(environ)
            return start_response(status, headers, exc_info)

        body = self.app(environ, start_with_id)  # Flask has started the answer when it returns
        seconds = time.perf_counter() - started
        status = int(answer[0][:3])
        metrics.request(answer[1], status, seconds)
        if self.access_log:
            log_request(environ, status, seconds)
        return body


def route(environ):
    """The URL rule that matched ("/items/<int:item_id>"), or "unmatched": a label with a bounded
    number of values, whatever paths clients try. Read while Flask starts its answer: it forgets
    its request right after."""
    request = environ.get("werkzeug.request")
    rule = request.url_rule if request is not None else None
    return rule.rule if rule is not None else "unmatched"


def target(environ):
    """The path and query as the client sent them."""
    raw = environ.get("RAW_URI")
    if raw is None:
        query = environ.get("QUERY_STRING")
        raw = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
    return raw


def log_request(environ, status, seconds):
    fields = {
        "method": environ.get("REQUEST_METHOD", ""),
        "path": target(environ),
        "status": status,
        "code": environ.get(CODE_KEY),
        "duration_ms": round(seconds * 1000, 2),
        "request_id": environ[REQUEST_ID_KEY],
    }
    access_logger.info("%s %s %d %s %.2fms request_id=%s", fields["method"], printable(fields["path"]),
                       status, fields["code"] or "-", fields["duration_ms"], fields["request_id"],
                       extra={"fields": fields})


def log_unexpected(environ):
    """Log the exception being handled, with its traceback and the request's id."""
    fields = {"method": environ.get("REQUEST_METHOD", ""), "path": target(environ),
              "request_id": environ.get(REQUEST_ID_KEY)}
    error_logger.exception("unexpected error in %s %s request_id=%s", fields["method"],
                           printable(fields["path"]), fields["request_id"], extra={"fields": fields})


def printable(text):
    """`text` with anything that could break or forge a line of the text log escaped."""
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, the record's fields (else its message),
    and the traceback if any."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if fields is None:
            entry["message"] = record.getMessage()
        else:
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_format):
    """The app's log lines (access and unexpected errors) go to stderr, as text or JSON lines."""
    logger = logging.getLogger("flashsale")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
