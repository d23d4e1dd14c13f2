"""Payments: prices in a currency's minor units, and Stripe's webhook deliveries, verified and read
as what they mean for a purchase (docs/payments.md). Nothing here touches the database or the
network: the route (routes/webhooks.py) verifies a delivery with verify(), reads it with
interpret(), and hands the Event to queries/apply_payment_event.sql, which decides it under the
purchase's row lock."""
import json
import re
import time
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import stripe
from babel.numbers import get_currency_precision, list_currencies

# Stripe's own tolerance for a signature's timestamp, the default of construct_event.
TOLERANCE_SECONDS = 300
# Stripe's events carry the whole object (a Checkout Session with its line items' summary, its
# metadata): far more than a purchase, far less than this.
MAX_BODY_BYTES = 65536
MAX_ID_LENGTH = 255  # payment_events.id's CHECK
MAX_BIGINT = 2**63 - 1
# Prices are capped so that price x the largest quantity stays a PostgreSQL bigint, with room.
MAX_PRICE_MINOR_UNITS = 10**12
CURRENCY = re.compile("[A-Za-z]{3}")
PURCHASE_ID = re.compile("[0-9]{1,19}")

# What each handled event type means: 'payment' (money arrived), 'failure' (recorded, changes
# nothing: the buyer may still pay within the window), 'expiry' (the Checkout Session expired:
# the hold ends at once). checkout.session.completed depends on its payment_status (see kind()).
KINDS = {
    "checkout.session.async_payment_succeeded": "payment",
    "payment_intent.succeeded": "payment",
    "checkout.session.async_payment_failed": "failure",
    "payment_intent.payment_failed": "failure",
    "checkout.session.expired": "expiry",
}
COMPLETED = "checkout.session.completed"


class Rejected(Exception):
    """A delivery that is not a verified event: answered 400 with this `code`, nothing written."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code, self.detail = code, detail


class Event(NamedTuple):
    """A verified event as apply_payment_event.sql takes it."""
    id: str
    type: str
    kind: str  # 'payment', 'failure' or 'expiry'
    purchase_id: int | None  # metadata.purchase_id; None when it names none
    amount: int | None  # minor units, for a payment
    currency: str | None  # ISO 4217, capitals, for a payment
    reference: str | None  # the PaymentIntent id, for a payment

    def params(self):
        return {"event_id": self.id, "event_type": self.type, "kind": self.kind, "purchase_id": self.purchase_id,
                "amount": self.amount, "currency": self.currency, "reference": self.reference}


# --- money ----------------------------------------------------------------------------------------

def currency_code(text):
    """The ISO 4217 code in capitals, or ValueError: CLDR's list (Babel), not one typed here."""
    code = (text or "").strip().upper()
    if not CURRENCY.fullmatch(code) or code not in list_currencies():
        raise ValueError(f"{text!r} is not an ISO 4217 currency code (EUR, USD, JPY...)")
    return code


def digits(currency):
    """The currency's minor-unit digits as CLDR has them: EUR 2, JPY 0, KWD 3."""
    return get_currency_precision(currency)


def minor_units(price, currency):
    """A decimal price ("49.90") in the currency's minor units (4990), or ValueError when it is not a
    price of that currency (negative, too many decimals: 0.5 JPY, or too large)."""
    try:
        value = Decimal(str(price).strip())
    except InvalidOperation:
        raise ValueError(f"{price!r} is not a number") from None
    scaled = value.scaleb(digits(currency))
    if not value.is_finite() or value < 0 or scaled != scaled.to_integral_value():
        raise ValueError(f"{price!r} is not a price in {currency}, which has {digits(currency)} decimals")
    if scaled > MAX_PRICE_MINOR_UNITS:
        raise ValueError(f"{price!r} is more than {MAX_PRICE_MINOR_UNITS} minor units of {currency}")
    return int(scaled)


def display(amount, currency):
    """Minor units as a person reads them: 4990 EUR -> "49.90 EUR"; "-" without an amount."""
    if amount is None or currency is None:
        return "-"
    return f"{Decimal(amount).scaleb(-digits(currency)):.{digits(currency)}f} {currency}"


# --- webhook deliveries ---------------------------------------------------------------------------

def verify(payload, header, secrets, now=None):
    """The delivery's event as a dict, when `header` (Stripe-Signature) signs the raw `payload` with
    one of `secrets` within TOLERANCE_SECONDS; else Rejected. Verified with the stripe package's
    construct_event. Stripe checks only that a timestamp is not too old; one too far ahead is
    refused too, as no clock Stripe signs with runs five minutes fast."""
    if not header:
        raise Rejected("missing_signature", "The Stripe-Signature header is missing.")
    if not header.isascii() or not header.isprintable():
        raise Rejected("invalid_signature", "The Stripe-Signature header is not printable ASCII.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("invalid_event", "The body is not UTF-8 text.") from None
    failure = None
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(text, header, secret, tolerance=TOLERANCE_SECONDS)
            break
        except stripe.SignatureVerificationError as exc:
            failure = exc
        except Exception:  # signed, but the stripe package cannot build an event from it
            raise Rejected("invalid_event", "The body is not a Stripe event.") from None
    else:
        reason = failure.user_message if failure else "no secret is configured"
        raise Rejected("invalid_signature", f"The signature does not verify: {reason}")
    if signed_at(header) > (now or time.time()) + TOLERANCE_SECONDS:
        raise Rejected("invalid_signature", "The signature's timestamp is in the future.")
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise Rejected("invalid_event", "The body is not JSON.") from None
    return event


def signed_at(header):
    """The timestamp (t=) of a Stripe-Signature header that has verified."""
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "t":
            return int(value)
    return 0


def interpret(event):
    """What a verified event means: an Event, or None for a type this service does not handle.
    Rejected when it is not shaped as a Stripe event (no id, type or object), or a payment without
    a whole amount or a currency."""
    if not isinstance(event, dict):
        raise Rejected("invalid_event", "The event is not a JSON object.")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not (isinstance(event_id, str) and 1 <= len(event_id) <= MAX_ID_LENGTH and isinstance(event_type, str)
            and isinstance(obj, dict)):
        raise Rejected("invalid_event", "The event has no id, type or data.object.")
    what = kind(event_type, obj)
    if what is None:
        return None
    amount = currency = reference = None
    if what == "payment":
        amount = obj.get("amount_received" if event_type.startswith("payment_intent.") else "amount_total")
        currency = obj.get("currency")
        if type(amount) is not int or not 0 <= amount <= MAX_BIGINT:
            raise Rejected("invalid_event", "The payment has no whole amount.")
        if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
            raise Rejected("invalid_event", "The payment has no currency.")
        currency = currency.upper()
        reference = payment_reference(event_type, obj)
    return Event(event_id, event_type, what, purchase_id(obj), amount, currency, reference)


def kind(event_type, obj):
    if event_type == COMPLETED:
        # "paid"; "unpaid" for a delayed method (SEPA, bank transfer) still on its way, which ends in
        # async_payment_succeeded or _failed; "no_payment_required" took no money.
        return "payment" if obj.get("payment_status") == "paid" else "failure"
    return KINDS.get(event_type)


def purchase_id(obj):
    """metadata.purchase_id as the shop set it (metadata values are strings), or None."""
    metadata = obj.get("metadata")
    value = metadata.get("purchase_id") if isinstance(metadata, dict) else None
    if type(value) is int:
        value = str(value)
    if isinstance(value, str) and PURCHASE_ID.fullmatch(value) and 1 <= int(value) <= MAX_BIGINT:
        return int(value)
    return None


def payment_reference(event_type, obj):
    """The PaymentIntent's id: the object itself for payment_intent.*, a Checkout Session's
    payment_intent. One payment is announced by both when the shop listens to both, and this is
    what makes it one. The object's own id when there is none."""
    candidates = (obj.get("id"),) if event_type.startswith("payment_intent.") else (obj.get("payment_intent"),
                                                                                    obj.get("id"))
    for candidate in candidates:
        if isinstance(candidate, dict):  # an expanded PaymentIntent
            candidate = candidate.get("id")
        if isinstance(candidate, str) and 1 <= len(candidate) <= MAX_ID_LENGTH:
            return candidate
    raise Rejected("invalid_event", "The payment names no PaymentIntent.")
