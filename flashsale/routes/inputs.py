"""Reading and checking what a request sends. The request is read from its WSGI environ, not
through werkzeug's parsed properties: this runs for every buyer, the sold-out crowd included,
and the environ costs a tenth as much."""
import json
import re

from flask import current_app, request
from gunicorn.http.errors import NoMoreData, ParseException

from db import MAX_INT
from flashsale import metrics
from flashsale.errors import Problem, invalid

MAX_BODY_BYTES = 4096
BODY_TIMEOUT_SECONDS = 5  # well under gunicorn's worker timeout
MAX_USER_ID_LENGTH = 64  # as purchases.user_id's CHECK
MAX_KEY_LENGTH = 255  # as purchases.idempotency_key's CHECK
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode categories Cc and Cs
VISIBLE_ASCII = re.compile(f"[!-~]{{1,{MAX_KEY_LENGTH}}}")
DIGITS = re.compile("[0-9]{1,20}")


def reject_duplicate_keys(pairs):
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("duplicate key in object")
    return body


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


JSON_DECODER = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant)


def plain_length(environ, limit=MAX_BODY_BYTES):
    """The body's declared length when it is within `limit`, else None (chunked, too long)."""
    declared = environ.get("CONTENT_LENGTH", "")
    length = int(declared) if declared.isdigit() else None
    return length if length is not None and length <= limit else None


def read_body(environ, limit=MAX_BODY_BYTES):
    """The request body, under gunicorn within BODY_TIMEOUT_SECONDS of silence. A plain length is
    read straight from the input; anything else (chunked, too long) goes through werkzeug's
    stream, which answers 413 past the request's max_content_length (MAX_BODY_BYTES unless the
    route raised it to `limit`): only inside Flask."""
    client = environ.get("gunicorn.socket")
    if client is not None:
        client.settimeout(BODY_TIMEOUT_SECONDS)  # a stalled client frees its sync worker in time
    length = plain_length(environ, limit)
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


def from_operator():
    """True when the client's address is one of METRICS_ALLOW's: the operators, who may read the
    metrics and an item's money. Over a unix socket the peer has no address; only this host's
    processes reach it, and the nginx in front (deploy/) puts the client's own address in
    X-Real-IP, overwriting any."""
    client = request.remote_addr or request.headers.get("X-Real-IP")
    return metrics.allowed(client, current_app.config["SETTINGS"].metrics_allow)
