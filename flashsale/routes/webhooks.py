"""POST /webhooks/stripe: the payment provider says that money arrived, or did not (docs/payments.md).

The delivery is verified over its raw body (flashsale/payments.py) before anything is parsed or
written; a verified event is applied once, under the purchase's row lock, by
apply_payment_event.sql. Every verified event is answered 200, whatever it did, so that Stripe
stops retrying it; only a delivery that is not a verified event is refused (400), and a database
that does not answer in time is 503, which Stripe retries."""
from flask import Blueprint, current_app, request

import db
from flashsale import metrics, payments
from flashsale.answers import json_response
from flashsale.errors import Problem, overloaded
from flashsale.routes.inputs import read_body

bp = Blueprint("webhooks", __name__)

TITLES = {"missing_signature": "Missing signature", "invalid_signature": "Invalid signature",
          "invalid_event": "Invalid event"}


@bp.post("/webhooks/stripe")
def stripe_webhook():
    secrets = current_app.config["SETTINGS"].stripe_webhook_secrets
    if not secrets:
        raise Problem(404, "payments_not_configured", "Payments not configured",
                      "Stripe webhooks are not accepted here: STRIPE_WEBHOOK_SECRET is not set.")
    request.max_content_length = payments.MAX_BODY_BYTES  # Stripe's events outgrow the 4 KiB of a purchase
    payload = read_body(request.environ, payments.MAX_BODY_BYTES)
    try:
        event = payments.interpret(payments.verify(payload, request.headers.get("Stripe-Signature"), secrets))
    except payments.Rejected as refusal:
        metrics.webhook_event("unverified", "rejected")
        raise Problem(400, refusal.code, TITLES[refusal.code], refusal.detail) from None
    if event is None:  # a type this service does not handle: nothing to store
        return answer(None, "ignored")
    try:
        row = db.apply_payment_event(event.params())
    except db.Unavailable:
        raise overloaded("The event could not be applied in time; nothing was applied. Deliver it again: "
                         "it is applied once.") from None
    if row["outcome"] in ("confirmed", "cancelled"):
        metrics.hold_event(row["outcome"])
    return answer(event, row["outcome"], row["first_outcome"])


def answer(event, outcome, first_outcome=None):
    """200 with what the event did; `event` None for a type not handled, counted as "other"."""
    metrics.webhook_event(event.type if event else "other", outcome)
    body = {"received": True, "outcome": outcome}
    if first_outcome is not None:
        body["first_outcome"] = first_outcome  # a redelivery: what the event did the first time
    if event is not None and event.purchase_id is not None:
        body["purchase_id"] = event.purchase_id
    return json_response(body)
