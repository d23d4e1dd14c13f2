"""gunicorn's sync worker, answering the requests it refuses itself as problem+json.

gunicorn answers a request it cannot parse (a bad request line, a bad Content-Length, both
Content-Length and chunked, ...) before the app sees it, with an HTML page written by
gunicorn.util.write_error. It offers no hook for that page, so each worker replaces the function
with one that writes the same status as problem+json with a stable code."""
import json

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
         431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def write_problem(sock, status, reason, message):
    code = CODES.get(status, "bad_request" if status < 500 else "internal_error")
    title = reason[:1] + reason[1:].lower()  # "Bad Request" -> "Bad request", as the app writes it
    body = json.dumps({"type": f"/problems/{code}", "title": title, "status": status,
                       "detail": message or reason, "code": code}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ProblemWorker(SyncWorker):
    def init_process(self):
        util.write_error = write_problem
        super().init_process()
