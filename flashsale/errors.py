"""Every error answer of the service: the Problem type, the code of each HTTP status, and the one
function that turns an exception into an answer. Flask's error handlers, the fast path of POST
/buy_ticket and gunicorn's own refusals (worker.py) all answer through here, as RFC 9457
problem details with a stable `code`."""
import json

from werkzeug.exceptions import HTTPException

from flashsale import auth, observe
from flashsale.answers import json_answer

RETRY_AFTER_SECONDS = 1
PROBLEM_TYPE = "application/problem+json"
# The code of an error answered by werkzeug (routing, body size) or by gunicorn (a request it
# cannot parse) rather than by a route; any other status is an "http_error".
STATUS_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large", 414: "uri_too_long", 417: "expectation_failed",
                431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


class Problem(Exception):
    """An error answer: RFC 9457 problem details plus a stable `code`."""

    def __init__(self, status, code, title, detail, **extra):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.extra = status, code, title, detail, extra


INTERNAL_ERROR = Problem(500, "internal_error", "Internal error",
                         "The server failed to answer; nothing is known to be sold.")


def overloaded(detail):
    return Problem(503, "overloaded", "Service overloaded", detail)


def invalid(errors, what="fields"):
    """The 422 naming each bad field or parameter: errors is [{"field": ..., "message": ...}]."""
    names = ", ".join(error["field"] for error in errors)
    return Problem(422, "invalid_request", "Invalid request", f"Invalid {what}: {names}.", errors=errors)


def problem_body(problem):
    return {"type": f"/problems/{problem.code}", "title": problem.title, "status": problem.status,
            "detail": problem.detail, "code": problem.code, **problem.extra}


def problem_answer(problem):
    headers = (("Retry-After", str(RETRY_AFTER_SECONDS)),) if problem.status == 503 else ()
    return json_answer(problem_body(problem), problem.status, headers, PROBLEM_TYPE, problem.code)


def unauthorized_answer(refusal):
    title = "Unauthorized" if refusal.code == "unauthorized" else "Invalid token"
    answer = problem_answer(Problem(401, refusal.code, title, refusal.detail))
    return answer._replace(headers=(*answer.headers, ("WWW-Authenticate", refusal.challenge)))


def http_error_answer(error):
    """werkzeug's HTTPException (404, 405, 413...) as a problem; a 405 names the allowed methods."""
    answer = problem_answer(Problem(error.code, STATUS_CODES.get(error.code, "http_error"), error.name,
                                    error.description))
    if error.code == 405:
        answer = answer._replace(headers=(*answer.headers, ("Allow", ", ".join(error.valid_methods))))
    return answer


def answer_for(error, environ):
    """The answer to a request whose handling raised `error`; anything unexpected is logged with
    its traceback and answered 500."""
    if isinstance(error, Problem):
        return problem_answer(error)
    if isinstance(error, auth.Unauthorized):
        return unauthorized_answer(error)
    if isinstance(error, HTTPException):
        return http_error_answer(error)
    observe.log_unexpected(environ)
    return problem_answer(INTERNAL_ERROR)


def refusal_bytes(status, reason, message):
    """gunicorn's refusal of a request it could not parse, before any app sees it, as a whole
    HTTP/1.1 message. `reason` is gunicorn's ("Bad Request"); the title is written as the app
    writes it ("Bad request")."""
    problem = Problem(status, STATUS_CODES.get(status, "http_error"), reason[:1] + reason[1:].lower(),
                      message or reason)
    body = json.dumps(problem_body(problem)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: {PROBLEM_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body
