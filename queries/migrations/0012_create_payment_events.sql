-- Migration 0012. Stores every payment event once, by its id: Stripe's event id (evt_...), or
-- for a payment an operator confirms by hand (`flask sale confirm`) one made from the purchase
-- and the operator's reference. A redelivered event finds its row and changes nothing.
-- `purchase_id` is the purchase the event names (metadata.purchase_id), null when it names none;
-- it may name a purchase that does not exist, so it is no foreign key; `item_id` is that
-- purchase's item, when it exists. `outcome` is what the event did (see
-- queries/apply_payment_event.sql).
-- A row that brought money has a `payment_status`, the amount, currency and `reference` (the
-- PaymentIntent id): 'paid' (it confirmed the hold), 'refund_due' (it came after the hold ended or
-- after another payment: owed back), 'refunded' (given back, `refund_reference` re_... at
-- `refunded_at`) or 'under_review' (not the amount or currency owed: set aside, the hold runs on).
-- UNIQUE (item_id, purchase_id, reference): one PaymentIntent is one payment of a purchase,
-- however many events (checkout.session.completed, payment_intent.succeeded) announce it (a
-- purchase has one item); its index also finds an item's payments, for its revenue.
-- Parameters: none.
CREATE TABLE payment_events (
    id text PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 255),
    type text NOT NULL,
    purchase_id bigint,
    item_id integer,
    outcome text NOT NULL CHECK (outcome IN ('confirmed', 'duplicate', 'late', 'refund_due', 'under_review',
                                             'cancelled', 'ignored')),
    received_at timestamptz NOT NULL DEFAULT now(),
    payment_status text CHECK (payment_status IN ('paid', 'refund_due', 'refunded', 'under_review')),
    amount bigint,
    currency text,
    reference text,
    refund_reference text UNIQUE,
    refunded_at timestamptz,
    UNIQUE (item_id, purchase_id, reference),
    CHECK ((payment_status IS NULL) = (reference IS NULL) AND (payment_status IS NULL OR purchase_id IS NOT NULL)),
    CHECK ((payment_status = 'refunded') = (refund_reference IS NOT NULL AND refunded_at IS NOT NULL))
)
