"""The flash-sale HTTP API: parses requests, calls db.py, answers JSON."""
import json
import re

from flask import Flask, Response, abort, render_template, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import HTTPException

import auth
import cli
import db
import metrics
import observe
import settings as configuration
from db import MAX_BIGINT, MAX_INT

MAX_BODY_BYTES = 4096
BODY_TIMEOUT_SECONDS = 5  # well under gunicorn's worker timeout
MAX_QUANTITY = 1000
MAX_USER_ID_LENGTH = 64  # as purchases.user_id's CHECK
MAX_KEY_LENGTH = 255  # as purchases.idempotency_key's CHECK
RETRY_AFTER_SECONDS = 1
BUY_FIELDS = {"item_id", "user_id", "quantity"}
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode categories Cc and Cs
VISIBLE_ASCII = re.compile(f"[!-~]{{1,{MAX_KEY_LENGTH}}}")

# Outcomes of buy_ticket.sql that refuse the purchase, each the `code` of its answer:
# status, title, detail.
REFUSALS = {
    "item_not_found": (404, "Item not found", "There is no item {item_id}."),
    "sale_not_started": (409, "Sale not started", "The sale of item {item_id} has not started yet."),
    "sale_ended": (409, "Sale ended", "The sale of item {item_id} has ended."),
    "sold_out": (409, "Sold out", "Item {item_id} has fewer than {quantity} units left."),
    "limit_reached": (409, "Purchase limit reached",
                      "User {user_id!r} would exceed the per-user limit of item {item_id}."),
    "idempotency_key_reused": (422, "Idempotency key reused",
                               "This Idempotency-Key was already used for a different purchase."),
}
PAGE_SIZE = 100  # GET /items: items per page unless `limit` says otherwise
MAX_PAGE_SIZE = 1000
PURCHASES_PAGE_SIZE = 20  # GET /purchases
MAX_PURCHASES_PAGE_SIZE = 100
STATUS_PAGE_ITEMS = 1000  # the status page's first rendering; its script reads every page
DIGITS = re.compile("[0-9]{1,20}")
HTTP_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                    413: "payload_too_large"}


class Problem(Exception):
    """An error answer: RFC 9457 problem details plus a stable `code`."""

    def __init__(self, status, code, title, detail, **extra):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.extra = status, code, title, detail, extra


def json_response(body, status=200, headers=None, mimetype="application/json"):
    return Response(json.dumps(body), status, headers, mimetype=mimetype)


def problem_response(problem):
    body = {
        "type": f"/problems/{problem.code}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        **problem.extra,
    }
    request.environ[observe.CODE_KEY] = problem.code  # for the access log
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if problem.status == 503 else None
    return json_response(body, problem.status, headers, mimetype="application/problem+json")


def overloaded(detail="The purchase could not be completed in time; nothing was sold. Retry later."):
    return Problem(503, "overloaded", "Service overloaded", detail)


def purchase_unavailable(unavailable, key):
    """The 503 for a purchase the database did not complete in time. When a COMMIT was cut off,
    the purchase may have been made: only its idempotency key can tell, so say so."""
    if not unavailable.outcome_unknown:
        return overloaded()
    if key is not None:
        return overloaded("The database stopped answering while the purchase was committed, so it may "
                          "or may not have been made. Retry with the same Idempotency-Key: that "
                          "returns the purchase if it was made, and makes it once if not.")
    return overloaded("The database stopped answering while the purchase was committed, so it may or "
                      "may not have been made. A retry without an Idempotency-Key could buy twice: "
                      "send purchases with an Idempotency-Key, and retry with the same one.")


def reject_duplicate_keys(pairs):
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("duplicate key in object")
    return body


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


JSON_DECODER = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant)


# The request is read from its WSGI environ, not through werkzeug's parsed properties: this
# runs for every buyer, the sold-out crowd included, and the environ costs a tenth as much.

def read_body(environ):
    """The request body, under gunicorn within BODY_TIMEOUT_SECONDS of silence. A declared length
    within the limit is read straight from the input; anything else (chunked, too long) goes
    through werkzeug's stream, which answers 413 past MAX_CONTENT_LENGTH."""
    client = environ.get("gunicorn.socket")
    if client is not None:
        client.settimeout(BODY_TIMEOUT_SECONDS)  # a stalled client frees its sync worker in time
    declared = environ.get("CONTENT_LENGTH", "")
    length = int(declared) if declared.isdigit() else None
    try:
        if length is None or length > MAX_BODY_BYTES:
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


def parse_purchase(environ, buyer=None):
    """The purchase asked for: (item_id, user_id, quantity, idempotency_key), or a Problem.
    With a verified `buyer`, user_id may be left out, and must be the buyer if given."""
    body = parse_json_object(environ)
    body.setdefault("quantity", 1)
    if buyer is not None:
        body.setdefault("user_id", buyer)
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
    errors = []
    if "item_id" not in body:
        errors.append({"field": "item_id", "message": "is required"})
    elif not whole_number(body["item_id"], 1, MAX_INT):
        errors.append({"field": "item_id", "message": f"must be a whole number from 1 to {MAX_INT}"})
    if "user_id" not in body:
        errors.append({"field": "user_id", "message": "is required"})
    elif not valid_user_id(body["user_id"]):
        errors.append({"field": "user_id",
                       "message": f"must be a string of 1 to {MAX_USER_ID_LENGTH} characters, "
                                  "without control characters"})
    if not whole_number(body["quantity"], 1, MAX_QUANTITY):
        errors.append({"field": "quantity", "message": f"must be a whole number from 1 to {MAX_QUANTITY}"})
    for field in sorted(body.keys() - BUY_FIELDS):
        errors.append({"field": field, "message": "is not a known field"})
    if key is not None and not valid_idempotency_key(key):
        errors.append({"field": "Idempotency-Key",
                       "message": f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"})
    if errors:
        fields = ", ".join(error["field"] for error in errors)
        raise Problem(422, "invalid_request", "Invalid request", f"Invalid fields: {fields}.",
                      errors=errors)
    if buyer is not None and body["user_id"] != buyer:
        raise Problem(403, "user_mismatch", "User mismatch",
                      "user_id must be the token's subject (sub), or be left out.")
    return body["item_id"], body["user_id"], body["quantity"], key


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
        fields = ", ".join(error["field"] for error in errors)
        raise Problem(422, "invalid_request", "Invalid request", f"Invalid parameters: {fields}.",
                      errors=errors)
    return values["after"], values["limit"]


def purchase_json(row):
    return {"purchase_id": row["id"], "item_id": row["item_id"], "user_id": row["user_id"],
            "quantity": row["quantity"], "created_at": row["created_at"].isoformat()}


def with_iso_times(item):
    for field in ("sale_starts_at", "sale_ends_at"):
        if item[field] is not None:
            item[field] = item[field].isoformat()
    return item


class FlashSale(Flask):
    def make_default_options_response(self):
        """OPTIONS names the allowed methods in `Allow`, with no body to describe."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.pop("Content-Type", None)
        return response


def create_app(settings=None):
    """The WSGI app. Without `settings`, the process's own (settings.load())."""
    settings = settings or configuration.load_or_exit()
    db.configure(settings)
    verifier = auth.verifier(settings, valid_user_id)  # None in open mode
    app = FlashSale(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    cli.init_app(app)  # flask --app app db ..., sale ...
    observe.install(app, settings, db.pop_pool_stats)

    @app.post("/buy_ticket")
    def buy_ticket():
        # Before anything else, the sold-out fast path included: every buyer shows a valid token.
        buyer = verifier.buyer(request.environ.get("HTTP_AUTHORIZATION")) if verifier else None
        item_id, user_id, quantity, key = parse_purchase(request.environ, buyer)
        try:
            row = db.buy_ticket(item_id, user_id, quantity, key)
        except db.Unavailable as exc:
            metrics.purchase("unavailable", item_id, quantity)
            raise purchase_unavailable(exc, key) from None
        outcome = row["outcome"]
        metrics.purchase(outcome, item_id, quantity)
        if outcome in REFUSALS:
            status, title, detail = REFUSALS[outcome]
            detail = detail.format(item_id=item_id, user_id=user_id, quantity=quantity)
            return problem_response(Problem(status, outcome, title, detail))
        purchase = {
            "purchase_id": row["purchase_id"],
            "item_id": row["item_id"],
            "user_id": user_id,
            "quantity": row["quantity"],
            "remaining": row["remaining"],
        }
        replayed = outcome == "replayed" and key is not None
        return json_response(purchase, 201, {"Idempotent-Replayed": "true"} if replayed else None)

    @app.get("/items/<int:item_id>")
    def get_item(item_id):
        try:
            item = db.get_item(item_id) if 1 <= item_id <= MAX_INT else None
        except db.Unavailable:
            raise overloaded("The item could not be read in time. Retry later.") from None
        if item is None:
            raise Problem(404, "item_not_found", "Item not found", f"There is no item {item_id}.")
        return json_response(with_iso_times(item))

    @app.get("/items")
    def list_items():
        after, limit = parse_page(request.args, MAX_INT, PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            rows = db.list_items(after, limit + 1)  # one more tells whether a next page exists
        except db.Unavailable:
            raise overloaded("The items could not be read in time. Retry later.") from None
        items = [with_iso_times(row) for row in rows[:limit]]
        next_after = items[-1]["id"] if len(rows) > limit else None
        return json_response({
            "items": items,
            "next_after": next_after,
            "next": None if next_after is None else f"/items?after={next_after}&limit={limit}",
        })

    @app.get("/status")
    def status_page():
        try:
            items, error = [with_iso_times(row) for row in db.list_items(0, STATUS_PAGE_ITEMS)], None
        except db.Unavailable:
            items, error = [], "The database did not answer in time; retrying."
        return render_template("status.html", items=items, error=error)

    @app.get("/metrics")
    def metrics_page():
        """Prometheus' text format, for METRICS_ALLOW only; to anyone else there is no such page."""
        # Over a unix socket the peer has no address; only this host's processes reach it, and the
        # nginx in front (deploy/) puts the client's own address in X-Real-IP, overwriting any.
        client = request.remote_addr or request.headers.get("X-Real-IP")
        if not metrics.enabled() or not metrics.allowed(client, settings.metrics_allow):
            abort(404)
        metrics.replication(db.ping())
        body, content_type = metrics.exposition()
        return Response(body, 200, content_type=content_type)

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        replication = db.ping()
        metrics.replication(replication)
        if replication:
            return json_response({"status": "ready", "auth": auth.mode(settings), "replication": replication})
        raise Problem(503, "not_ready", "Not ready",
                      f"The database did not answer within {db.READY_TIMEOUT_SECONDS:g} s.")

    @app.get("/purchases")
    def list_purchases():
        buyer = verified_buyer()
        after, limit = parse_page(request.args, MAX_BIGINT, PURCHASES_PAGE_SIZE, MAX_PURCHASES_PAGE_SIZE)
        try:
            rows = db.buyer_purchases(buyer, after or None, limit + 1)  # one more: is there a next page?
        except db.Unavailable:
            raise overloaded("The purchases could not be read in time. Retry later.") from None
        page = [purchase_json(row) for row in rows[:limit]]
        next_after = page[-1]["purchase_id"] if len(rows) > limit else None
        return json_response({"purchases": page, "next_after": next_after})

    @app.get("/purchases/<int:purchase_id>")
    def get_purchase(purchase_id):
        buyer = verified_buyer()
        try:
            row = db.buyer_purchase(buyer, purchase_id) if purchase_id <= MAX_BIGINT else None
        except db.Unavailable:
            raise overloaded("The purchase could not be read in time. Retry later.") from None
        if row is None:  # the same answer whether it is another buyer's or does not exist
            raise Problem(404, "purchase_not_found", "Purchase not found",
                          f"You have no purchase {purchase_id}.")
        return json_response(purchase_json(row))

    def verified_buyer():
        if verifier is None:
            raise Problem(404, "verified_mode_required", "Not available in open mode",
                          "A buyer's purchases are served only when tokens are verified "
                          "(AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY).")
        return verifier.buyer(request.environ.get("HTTP_AUTHORIZATION"))

    @app.errorhandler(auth.Unauthorized)
    def handle_unauthorized(refusal):
        title = "Unauthorized" if refusal.code == "unauthorized" else "Invalid token"
        response = problem_response(Problem(401, refusal.code, title, refusal.detail))
        response.headers["WWW-Authenticate"] = refusal.challenge
        return response

    @app.errorhandler(Problem)
    def handle_problem(problem):
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    def handle_http_error(error):
        code = HTTP_ERROR_CODES.get(error.code, "http_error")
        response = problem_response(Problem(error.code, code, error.name, error.description))
        if error.code == 405:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error):
        observe.log_unexpected(request.environ)
        return problem_response(Problem(500, "internal_error", "Internal error",
                                        "The server failed to answer; nothing is known to be sold."))

    return app


app = create_app()
