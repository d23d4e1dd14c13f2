"""Stripe's side of a webhook, for the tests, the proof and the chaos runs: events shaped as Stripe
sends them (only the fields the service reads, and a few it must ignore), signed with Stripe's
scheme by the stripe package itself, and delivered over HTTP as Stripe does."""
import json
import secrets as randomness

import requests
import stripe

WEBHOOK_PATH = "/webhooks/stripe"


def new_id(prefix):
    return f"{prefix}_{randomness.token_hex(12)}"


def event(event_type, obj, event_id=None):
    return {"id": event_id or new_id("evt"), "object": "event", "api_version": "2024-06-20",
            "created": 1764979200, "livemode": False, "pending_webhooks": 1, "type": event_type,
            "data": {"object": obj}}


def metadata(purchase_id):
    return {} if purchase_id is None else {"purchase_id": str(purchase_id)}


def checkout_session(purchase_id, amount, currency, payment_status="paid", payment_intent=None, status="complete"):
    return {"id": new_id("cs_test"), "object": "checkout.session", "amount_total": amount,
            "currency": currency.lower(), "metadata": metadata(purchase_id), "mode": "payment",
            "payment_intent": payment_intent or new_id("pi"), "payment_status": payment_status, "status": status}


def payment_intent(purchase_id, amount, currency, status="succeeded", intent_id=None):
    return {"id": intent_id or new_id("pi"), "object": "payment_intent", "amount": amount,
            "amount_received": amount if status == "succeeded" else 0, "currency": currency.lower(),
            "metadata": metadata(purchase_id), "status": status}


def checkout_completed(purchase_id, amount, currency, payment_intent=None, payment_status="paid"):
    return event("checkout.session.completed",
                 checkout_session(purchase_id, amount, currency, payment_status, payment_intent))


def async_payment_succeeded(purchase_id, amount, currency, payment_intent=None):
    return event("checkout.session.async_payment_succeeded",
                 checkout_session(purchase_id, amount, currency, "paid", payment_intent))


def async_payment_failed(purchase_id, amount, currency):
    return event("checkout.session.async_payment_failed",
                 checkout_session(purchase_id, amount, currency, "unpaid"))


def checkout_expired(purchase_id, amount=0, currency="eur"):
    session = checkout_session(purchase_id, amount, currency, "unpaid", status="expired")
    session["payment_intent"] = None
    return event("checkout.session.expired", session)


def intent_succeeded(purchase_id, amount, currency, intent_id=None):
    return event("payment_intent.succeeded", payment_intent(purchase_id, amount, currency, "succeeded", intent_id))


def intent_failed(purchase_id, amount, currency, intent_id=None):
    return event("payment_intent.payment_failed",
                 payment_intent(purchase_id, amount, currency, "requires_payment_method", intent_id))


def body(evt):
    return json.dumps(evt, separators=(",", ":"))


def signature(payload, secret, timestamp=None):
    """The Stripe-Signature header: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def deliver(url, evt, secret, session=None, timestamp=None, timeout=15):
    """POST the event, signed, to the service at `url` as Stripe does; the requests.Response."""
    payload = body(evt)
    return (session or requests).post(f"{url}{WEBHOOK_PATH}", data=payload.encode(), timeout=timeout, headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": signature(payload, secret, timestamp)})
