"""What every route shares: JSON and problem+json answers, and reading and checking what a
request sends. The request is read from its WSGI environ, not through werkzeug's parsed
properties: this runs for every buyer, the sold-out crowd included, and the environ costs a
tenth as much."""
import json
import re
from datetime import timezone
from typing import NamedTuple

from flask import Response, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.http import HTTP_STATUS_CODES

import observe
from db import MAX_INT

MAX_BODY_BYTES = 4096
BODY_TIMEOUT_SECONDS = 5  # well under gunicorn's worker timeout
MAX_USER_ID_LENGTH = 64  # as purchases.user_id's CHECK
MAX_KEY_LENGTH = 255  # as purchases.idempotency_key's CHECK
RETRY_AFTER_SECONDS = 1
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode categories Cc and Cs
VISIBLE_ASCII = re.compile(f"[!-~]{{1,{MAX_KEY_LENGTH}}}")
DIGITS = re.compile("[0-9]{1,20}")


class Problem(Exception):
    """An error answer: RFC 9457 problem details plus a stable `code`."""

    def __init__(self, status, code, title, detail, **extra):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.extra = status, code, title, detail, extra


INTERNAL_ERROR = Problem(500, "internal_error", "Internal error",
                         "The server failed to answer; nothing is known to be sold.")


class Answer(NamedTuple):
    """An answer ready for WSGI: POST /buy_ticket answers outside Flask (routes/fast_path.py) and
    inside it (response()), byte for byte the same. `code` is the problem's, for the access log."""
    status: str  # "409 CONFLICT", as werkzeug writes it
    headers: tuple
    body: bytes
    code: str | None = None


def json_answer(body, status=200, headers=(), content_type="application/json", code=None):
    """The headers in the order werkzeug's Response puts them: the given ones, then the type and
    the length."""
    data = json.dumps(body).encode()
    return Answer(f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}",
                  (*headers, ("Content-Type", content_type), ("Content-Length", str(len(data)))), data, code)


def problem_answer(problem):
    body = {
        "type": f"/problems/{problem.code}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        **problem.extra,
    }
    headers = (("Retry-After", str(RETRY_AFTER_SECONDS)),) if problem.status == 503 else ()
    return json_answer(body, problem.status, headers, "application/problem+json", problem.code)


def unauthorized_answer(refusal):
    title = "Unauthorized" if refusal.code == "unauthorized" else "Invalid token"
    answer = problem_answer(Problem(401, refusal.code, title, refusal.detail))
    return answer._replace(headers=(*answer.headers, ("WWW-Authenticate", refusal.challenge)))


def response(answer):
    """The Answer as Flask's Response."""
    if answer.code is not None:
        request.environ[observe.CODE_KEY] = answer.code  # for the access log
    return Response(answer.body, answer.status, answer.headers)


def json_response(body, status=200, headers=None, mimetype="application/json"):
    return Response(json.dumps(body), status, headers, mimetype=mimetype)


def problem_response(problem):
    return response(problem_answer(problem))


def overloaded(detail):
    return Problem(503, "overloaded", "Service overloaded", detail)


def invalid(errors, what="fields"):
    """The 422 naming each bad field or parameter: errors is [{"field": ..., "message": ...}]."""
    names = ", ".join(error["field"] for error in errors)
    return Problem(422, "invalid_request", "Invalid request", f"Invalid {what}: {names}.", errors=errors)


def reject_duplicate_keys(pairs):
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("duplicate key in object")
    return body


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


JSON_DECODER = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant)


def plain_length(environ):
    """The body's declared length when it is within MAX_BODY_BYTES, else None (chunked, too long)."""
    declared = environ.get("CONTENT_LENGTH", "")
    length = int(declared) if declared.isdigit() else None
    return length if length is not None and length <= MAX_BODY_BYTES else None


def read_body(environ):
    """The request body, under gunicorn within BODY_TIMEOUT_SECONDS of silence. A plain length is
    read straight from the input; anything else (chunked, too long) goes through werkzeug's
    stream, which answers 413 past MAX_CONTENT_LENGTH: only inside Flask."""
    client = environ.get("gunicorn.socket")
    if client is not None:
        client.settimeout(BODY_TIMEOUT_SECONDS)  # a stalled client frees its sync worker in time
    length = plain_length(environ)
    try:
        if length is None:
            return request.get_data()
        body = environ["wsgi.input"].read(length)
    except TimeoutError:
        raise Problem(408, "request_timeout", "Request timeout",
                      f"The body did not arrive within {BODY_TIMEOUT_SECONDS} seconds.") from None
    except (ParseException, NoMoreData) as exc:  # broken chunked framing, or the client went away
        raise Problem(400, "bad_request", "Bad request", f"The body is not well framed: {exc}.") from None
    if len(body) != length:
        raise Problem(400, "invalid_json", "Invalid JSON", "The body ended before its Content-Length.")
    return body


def parse_json_object(environ):
    """The request body as a JSON object, or a Problem."""
    if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
        raise Problem(415, "unsupported_media_type", "Unsupported media type",
                      "Send the body as JSON with Content-Type: application/json.")
    try:
        body = JSON_DECODER.decode(read_body(environ).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Problem(400, "invalid_json", "Invalid JSON", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise Problem(400, "invalid_json", "Invalid JSON", "The body must be a JSON object.")
    return body


def whole_number(value, low, high):
    return type(value) is int and low <= value <= high  # bool is not a number here


def valid_user_id(value):
    return (isinstance(value, str) and 1 <= len(value) <= MAX_USER_ID_LENGTH
            and not CONTROL_OR_SURROGATE.search(value))


def valid_idempotency_key(value):
    return VISIBLE_ASCII.fullmatch(value) is not None


def check_item_id(body, errors):
    if "item_id" not in body:
        errors.append({"field": "item_id", "message": "is required"})
    elif not whole_number(body["item_id"], 1, MAX_INT):
        errors.append({"field": "item_id", "message": f"must be a whole number from 1 to {MAX_INT}"})


def check_user_id(body, errors):
    if "user_id" not in body:
        errors.append({"field": "user_id", "message": "is required"})
    elif not valid_user_id(body["user_id"]):
        errors.append({"field": "user_id",
                       "message": f"must be a string of 1 to {MAX_USER_ID_LENGTH} characters, "
                                  "without control characters"})


def check_known_fields(body, known, errors):
    for field in sorted(body.keys() - known):
        errors.append({"field": field, "message": "is not a known field"})


def idempotency_key(environ, errors):
    """The Idempotency-Key header, None when not sent; a bad one is added to `errors`."""
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
    if key is not None and not valid_idempotency_key(key):
        errors.append({"field": "Idempotency-Key",
                       "message": f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"})
    return key


def has_body(environ):
    """True when the request carries a body: a Content-Length above 0, or chunked."""
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ


def check_buyer(body, buyer):
    """With a verified `buyer`, user_id may be left out, and must be the buyer if given."""
    if buyer is not None and body["user_id"] != buyer:
        raise Problem(403, "user_mismatch", "User mismatch",
                      "user_id must be the token's subject (sub), or be left out.")


def parse_page(args, after_max, default_limit, max_limit):
    """?after=&limit=: (after, limit), `after` 0 when not given, or a Problem naming each bad
    parameter. `after` is the last id of the previous page."""
    errors, values = [], {}
    for name, low, high, default in (("after", 0, after_max, 0), ("limit", 1, max_limit, default_limit)):
        given = args.getlist(name)
        values[name] = default
        if len(given) > 1:
            errors.append({"field": name, "message": "is given more than once"})
        elif given and DIGITS.fullmatch(given[0]) and low <= int(given[0]) <= high:
            values[name] = int(given[0])
        elif given:
            errors.append({"field": name, "message": f"must be a whole number from {low} to {high}"})
    for name in sorted(args.keys() - {"after", "limit"}):
        errors.append({"field": name, "message": "is not a known parameter"})
    if errors:
        raise invalid(errors, "parameters")
    return values["after"], values["limit"]


def utc_iso(moment):
    """A datetime as ISO 8601 in UTC, to the microsecond: 2026-12-02T13:00:05.123456Z."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_times(row, *fields):
    """The row with these fields (datetimes or None) as ISO 8601 text."""
    for field in fields:
        if row[field] is not None:
            row[field] = row[field].isoformat()
    return row
