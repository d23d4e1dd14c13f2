"""Purchases: POST /buy_ticket, giving up a hold (cancel; payment comes from the payment provider,
routes/webhooks.py), and a verified buyer's own purchases."""
from functools import lru_cache

from flask import Blueprint, current_app, request

import db
from db import MAX_BIGINT
from flashsale import metrics
from flashsale.answers import json_answer, json_response, response, utc_iso
from flashsale.errors import Problem, invalid, overloaded, problem_answer
from flashsale.routes.inputs import (check_buyer, check_item_id, check_known_fields, check_user_id, has_body,
                                     idempotency_key, parse_json_object, parse_page, whole_number)

bp = Blueprint("purchases", __name__)

MAX_QUANTITY = 1000
BUY_FIELDS = {"item_id", "user_id", "quantity"}
SETTLE_FIELDS = {"user_id"}  # cancel
PAGE_SIZE = 20  # GET /purchases
MAX_PAGE_SIZE = 100
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
# Outcomes of cancel_purchase.sql that refuse the change.
SETTLE_REFUSALS = {
    "purchase_not_found": (404, "Purchase not found", "You have no purchase {purchase_id}."),
    "hold_expired": (409, "Hold expired", "The hold of purchase {purchase_id} expired at {expires_at} "
                                          "before it was paid for: its units went back on sale."),
    "purchase_confirmed": (409, "Purchase confirmed",
                           "Purchase {purchase_id} is paid for and cannot be cancelled."),
}


def verifier():
    """The app's token Verifier; None in open mode."""
    return current_app.config["VERIFIER"]


def parse_purchase(environ, buyer=None):
    """The purchase asked for: (item_id, user_id, quantity, idempotency_key), or a Problem.
    With a verified `buyer`, user_id may be left out, and must be the buyer if given."""
    body = parse_json_object(environ)
    body.setdefault("quantity", 1)
    if buyer is not None:
        body.setdefault("user_id", buyer)
    errors = []
    check_item_id(body, errors)
    check_user_id(body, errors)
    if not whole_number(body["quantity"], 1, MAX_QUANTITY):
        errors.append({"field": "quantity", "message": f"must be a whole number from 1 to {MAX_QUANTITY}"})
    check_known_fields(body, BUY_FIELDS, errors)
    key = idempotency_key(environ, errors)
    if errors:
        raise invalid(errors)
    check_buyer(body, buyer)
    return body["item_id"], body["user_id"], body["quantity"], key


def purchase_unavailable(unavailable, key):
    """The 503 for a purchase the database did not complete in time. When a COMMIT was cut off,
    the purchase may have been made: only its idempotency key can tell, so say so."""
    if not unavailable.outcome_unknown:
        return overloaded("The purchase could not be completed in time; nothing was sold. Retry later.")
    if key is not None:
        return overloaded("The database stopped answering while the purchase was committed, so it may "
                          "or may not have been made. Retry with the same Idempotency-Key: that "
                          "returns the purchase if it was made, and makes it once if not.")
    return overloaded("The database stopped answering while the purchase was committed, so it may or "
                      "may not have been made. A retry without an Idempotency-Key could buy twice: "
                      "send purchases with an Idempotency-Key, and retry with the same one.")


def purchase_json(row, status=None):
    """A purchase as GET /purchases/<id> shows it; `status` overrides the row's. A row of
    buyer_purchase(s).sql adds what it owes and its latest payment (docs/payments.md)."""
    shown = {"purchase_id": row["id"], "item_id": row["item_id"], "user_id": row["user_id"],
             "quantity": row["quantity"], "status": status or row["status"],
             "expires_at": utc_iso(row["expires_at"]) if row["expires_at"] else None,
             "created_at": row["created_at"].isoformat()}
    if "payment_status" in row:
        shown["amount"], shown["currency"] = row["amount"], row["currency"]
        shown["payment"] = None if row["payment_status"] is None else {
            "status": row["payment_status"], "amount": row["payment_amount"], "currency": row["payment_currency"],
            "reference": row["payment_reference"]}
    return shown


def verified_buyer():
    check = verifier()
    if check is None:
        raise Problem(404, "verified_mode_required", "Not available in open mode",
                      "A buyer's purchases are served only when tokens are verified "
                      "(AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY).")
    return check.buyer(request.environ.get("HTTP_AUTHORIZATION"))


def buy(environ, check):
    """POST /buy_ticket: the Answer, or a Problem or auth.Unauthorized raised. `check` is the
    token Verifier, None in open mode. Runs outside Flask (routes/fast_path.py) as well as inside."""
    # Before anything else, the sold-out fast path included: every buyer shows a valid token.
    buyer = check.buyer(environ.get("HTTP_AUTHORIZATION")) if check else None
    item_id, user_id, quantity, key = parse_purchase(environ, buyer)
    try:
        row = db.buy_ticket(item_id, user_id, quantity, key)
    except db.Unavailable as exc:
        metrics.purchase("unavailable", item_id, quantity)
        raise purchase_unavailable(exc, key) from None
    outcome = row["outcome"]
    metrics.purchase(outcome, item_id, quantity)
    if row["expired"]:
        metrics.hold_event("expired", row["expired"])
    if outcome == "sold_out":
        return sold_out(item_id, quantity)
    if outcome in REFUSALS:
        return problem_answer(refusal(outcome, item_id, user_id, quantity))
    purchase = {
        "purchase_id": row["purchase_id"],
        "item_id": row["item_id"],
        "user_id": user_id,
        "quantity": row["quantity"],
        "remaining": row["remaining"],
    }
    if row["expires_at"] is not None:  # a hold: paid for through the payment provider (docs/payments.md)
        if outcome == "sold":
            metrics.hold_event("made")
        purchase["status"] = "held"
        purchase["expires_at"] = utc_iso(row["expires_at"])
        purchase["amount"], purchase["currency"] = row["amount"], row["currency"]  # what to charge
    replayed = outcome == "replayed" and key is not None
    return json_answer(purchase, 201, (("Idempotent-Replayed", "true"),) if replayed else ())


def refusal(outcome, item_id, user_id, quantity):
    status, title, detail = REFUSALS[outcome]
    return Problem(status, outcome, title, detail.format(item_id=item_id, user_id=user_id, quantity=quantity))


@lru_cache(maxsize=1024)
def sold_out(item_id, quantity):
    """The answer the sold-out crowd gets, made once per item and quantity."""
    return problem_answer(refusal("sold_out", item_id, None, quantity))


@bp.post("/buy_ticket")
def buy_ticket():
    return response(buy(request.environ, verifier()))


@bp.get("/purchases")
def list_purchases():
    buyer = verified_buyer()
    after, limit = parse_page(request.args, MAX_BIGINT, PAGE_SIZE, MAX_PAGE_SIZE)
    try:
        rows = db.buyer_purchases(buyer, after or None, limit + 1)  # one more: is there a next page?
    except db.Unavailable:
        raise overloaded("The purchases could not be read in time. Retry later.") from None
    page = [purchase_json(row) for row in rows[:limit]]
    next_after = page[-1]["purchase_id"] if len(rows) > limit else None
    return json_response({"purchases": page, "next_after": next_after})


@bp.get("/purchases/<int:purchase_id>")
def get_purchase(purchase_id):
    buyer = verified_buyer()
    try:
        row = db.buyer_purchase(buyer, purchase_id) if purchase_id <= MAX_BIGINT else None
    except db.Unavailable:
        raise overloaded("The purchase could not be read in time. Retry later.") from None
    if row is None:  # the same answer whether it is another buyer's or does not exist
        raise Problem(404, "purchase_not_found", "Purchase not found", f"You have no purchase {purchase_id}.")
    return json_response(purchase_json(row))


def settling_buyer(environ):
    """Who cancels: the token's buyer in verified mode (the body's optional user_id must be it),
    else the body's user_id. The body holds nothing else; Idempotency-Key is checked as for a
    purchase. A cancel is idempotent by the purchase's state, so a retry, with the key or
    without, finds the outcome."""
    check = verifier()
    buyer = check.buyer(environ.get("HTTP_AUTHORIZATION")) if check else None
    body = parse_json_object(environ) if check is None or has_body(environ) else {}
    if buyer is not None:
        body.setdefault("user_id", buyer)
    errors = []
    check_user_id(body, errors)
    check_known_fields(body, SETTLE_FIELDS, errors)
    idempotency_key(environ, errors)
    if errors:
        raise invalid(errors)
    check_buyer(body, buyer)
    return body["user_id"]


@bp.post("/purchases/<int:purchase_id>/cancel")
def cancel(purchase_id):
    """Cancel the buyer's open hold: 200 with it, or a problem."""
    user_id = settling_buyer(request.environ)
    if purchase_id > MAX_BIGINT:
        row = {"outcome": "purchase_not_found"}
    else:
        try:
            row = db.cancel_purchase(user_id, purchase_id)
        except db.Unavailable:
            raise overloaded("The cancel could not be completed in time; it may or may not have been made. "
                             "Retry: asking to cancel again finds the outcome, and never cancels twice.") from None
    outcome = row["outcome"]
    if outcome in SETTLE_REFUSALS:
        status, title, detail = SETTLE_REFUSALS[outcome]
        expires_at = utc_iso(row["expires_at"]) if row.get("expires_at") else None
        raise Problem(status, outcome, title, detail.format(purchase_id=purchase_id, expires_at=expires_at))
    if row["changed"]:
        metrics.hold_event(outcome)
    return json_response(purchase_json(row, outcome))


@bp.post("/purchases/<int:purchase_id>/confirm")
def confirm(purchase_id):
    """Gone: a buyer's word is no payment. The payment provider confirms (docs/payments.md)."""
    raise Problem(410, "confirm_gone", "Gone",
                  "A hold is no longer confirmed by the buyer: payment now comes from the payment provider, "
                  "whose signed webhook confirms it (POST /webhooks/stripe). Pay through the shop's checkout.")
