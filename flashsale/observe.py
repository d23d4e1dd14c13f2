"""What every request leaves behind: its X-Request-ID, its metrics and, with ACCESS_LOG, a log line.

Observed wraps the Flask app as WSGI middleware. It runs for every buyer, so it reads the WSGI
environ and does nothing it was not asked to: no log record without ACCESS_LOG, no metric
without METRICS. Under gunicorn, log lines and counts are written in batches, by a thread of
each worker every FLUSH_SECONDS and as the worker exits (flush_every, flush).
"""
import json
import logging
import os
import re
import select
import sys
import threading
import time
from functools import lru_cache

from flashsale import metrics

MAX_REQUEST_ID_LENGTH = 128
REQUEST_ID = re.compile(f"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")  # visible ASCII
REQUEST_ID_KEY = "flashsale.request_id"  # in the WSGI environ
CODE_KEY = "flashsale.code"  # the problem's `code`, set by routes.answers.response and routes/fast_path.py
ROUTE_KEY = "flashsale.route"  # the route of an answer made outside Flask (routes/fast_path.py)
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"  # as gunicorn's own lines
FLUSH_SECONDS = 1.0  # how long a log line or a count may wait in a worker before it is written
STDERR = 2  # the file descriptor, which gunicorn's own lines go to as well

ACCESS_LOGGER = "flashsale.access"  # the name access lines carry
error_logger = logging.getLogger("flashsale.error")


def install(app, settings, pool_stats):
    """Observe every request of the Flask `app`; `pool_stats` returns psycopg_pool's pop_stats()."""
    metrics.start(settings.metrics, pool_stats)
    lines = setup_logging(settings.log_format)
    access_line = None
    if settings.access_log:
        access_line = json_access_line if settings.log_format == "json" else text_access_line
    app.wsgi_app = Observed(app.wsgi_app, access_line, lines)


class Observed:
    """WSGI middleware: the request id, in the environ and in every answer; the request's
    metrics; and its access line, made by `access_line` (None: no access log) and written to
    `lines`."""

    def __init__(self, app, access_line, lines):
        self.app = app
        self.access_line = access_line
        self.lines = lines

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
        if self.access_line is not None:
            self.lines.write(self.access_line(environ, status, seconds))
        return body


def route(environ):
    """The URL rule that matched ("/items/<int:item_id>"), or "unmatched": a label with a bounded
    number of values, whatever paths clients try. Read while Flask starts its answer: it forgets
    its request right after."""
    if ROUTE_KEY in environ:
        return environ[ROUTE_KEY]
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


# Access lines are made here, in the shapes the formatters below give a log record, rather than
# through logging: a record costs several times what the line itself does, against a sold-out
# answer's small total (docs/observe.md).

def text_access_line(environ, status, seconds):
    now = time.time()
    return (f"[{local_second(int(now))},{int(now % 1 * 1000):03d}] [{os.getpid()}] [INFO] "
            f"{environ.get('REQUEST_METHOD', '')} {printable(target(environ))} {status} "
            f"{environ.get(CODE_KEY) or '-'} {seconds * 1000:.2f}ms request_id={environ[REQUEST_ID_KEY]}")


def json_access_line(environ, status, seconds):
    now = time.time()
    return json.dumps({
        "time": utc_time(now),
        "level": "info",
        "logger": ACCESS_LOGGER,
        "pid": os.getpid(),
        "method": environ.get("REQUEST_METHOD", ""),
        "path": target(environ),
        "status": status,
        "code": environ.get(CODE_KEY),
        "duration_ms": round(seconds * 1000, 2),
        "request_id": environ[REQUEST_ID_KEY],
    })


@lru_cache(maxsize=2)
def local_second(second):
    """As logging.Formatter's asctime, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def utc_time(now):
    """time.time() `now` in ISO 8601, to the millisecond, in UTC: the JSON lines' "time"."""
    return f"{utc_second(int(now))}.{int(now % 1 * 1000):03d}+00:00"


@lru_cache(maxsize=2)
def utc_second(second):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


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
            "time": utc_time(record.created),
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


class BatchedLines(logging.Handler):
    """Writes log lines to a file descriptor, in batches once `batched` (as nginx's `access_log
    ... buffer=` does): one write() per PIPE_BUF bytes of whole lines, or per flush(), instead
    of one a line. A write of at most PIPE_BUF bytes to a pipe is never interleaved with another
    process's, so the workers' lines stay whole. A warning or worse is written at once."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.batched = False
        self.lines, self.size = [], 0

    def emit(self, record):  # under the handler's lock
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line, at_once=record.levelno >= logging.WARNING)

    def write(self, line):
        """Write a line made without a log record (an access line)."""
        with self.lock:
            self.add(line)

    def flush(self):
        with self.lock:
            self.write_lines()

    def add(self, line, at_once=False):
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self.size + len(data) > select.PIPE_BUF:
            self.write_lines()
        self.lines.append(data)
        self.size += len(data)
        if at_once or not self.batched:
            self.write_lines()

    def write_lines(self):
        data = memoryview(b"".join(self.lines))
        self.lines, self.size = [], 0
        while data:
            data = data[os.write(self.fd, data):]


def setup_logging(log_format):
    """The app's log lines (access and unexpected errors) go to stderr, as text or JSON lines,
    through the BatchedLines handler returned."""
    logger = logging.getLogger("flashsale")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    sys.stderr.flush()  # what Python buffered for it goes first
    handler = BatchedLines(STDERR)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def flush():
    """Write the log lines and the counts this process holds (gunicorn's worker_exit)."""
    metrics.flush()
    for handler in logging.getLogger("flashsale").handlers:
        handler.flush()


def flush_every(seconds):
    """From now on batch log lines and counts, written by a thread of this process every
    `seconds` (gunicorn's post_worker_init, once the worker has loaded the app)."""
    def flush_forever():
        while True:
            time.sleep(seconds)
            flush()

    for handler in logging.getLogger("flashsale").handlers:
        handler.batched = True
    threading.Thread(target=flush_forever, name="flush", daemon=True).start()
