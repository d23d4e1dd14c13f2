"""gunicorn's sync worker, answering the requests it refuses itself as problem+json.

gunicorn answers a request it cannot parse (a bad request line, a bad Content-Length, both
Content-Length and chunked, ...) before the app sees it, with an HTML page written by
gunicorn.util.write_error. It offers no hook for that page, so each worker replaces the function
with one that writes the same status through the errors module."""
from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from flashsale.errors import refusal_bytes


def write_problem(sock, status, reason, message):
    util.write_nonblock(sock, refusal_bytes(status, reason, message))


class ProblemWorker(SyncWorker):
    def init_process(self):
        util.write_error = write_problem
        super().init_process()
