-- Applies one payment event, once: a Stripe webhook event (POST /webhooks/stripe) or a payment an
-- operator confirms by hand (`flask sale confirm`). The event is stored by its id; an id already
-- stored answers 'duplicate' with the outcome it had, and changes nothing.
-- `kind` is what the event means: 'payment' (money arrived: `amount` in `currency`, `reference`
-- the PaymentIntent id; a null amount is the operator's word that the amount owed was paid),
-- 'expiry' (the Checkout Session expired: cancel the hold, units back at once) or 'failure'
-- (recorded, changes nothing: the buyer may still pay within the window).
-- The purchase's row is locked (`purchase`, FOR UPDATE), which the hold's expiry, a cancel and
-- other events take too, so the verdict is made on its latest version: one of them wins, and the
-- others find it changed. The item's row is locked, before the purchase's as everywhere, only for
-- an expiry event, which returns units. What is read without a lock (`earlier`, `same_payment`)
-- is the statement's snapshot: an event or payment committed while this waited for a lock is
-- missed there, and the INSERT then fails on the primary key or on the one PaymentIntent's UNIQUE
-- instead, and db.py runs the statement again in a fresh snapshot, which finds it.
-- Outcomes: 'confirmed' (a payment of the amount and currency owed, for a hold still open),
-- 'under_review' (a payment of another amount or currency for an open hold: set aside, the hold
-- runs on), 'late' (a payment after the hold expired or was cancelled: owed back),
-- 'refund_due' (a payment for a purchase already paid for: owed back), 'duplicate' (the event, or
-- its PaymentIntent by another event, was applied before), 'cancelled' (an expiry event ended an
-- open hold), 'ignored' (a failure, an expiry of a hold no longer open, or no such purchase).
-- Answers one row: outcome, first_outcome (for a duplicate event, the outcome it had), the
-- purchase's purchase_id, item_id and quantity, and the payment's amount and currency.
-- Parameters: event_id, event_type, kind, purchase_id (null: names none), amount, currency,
-- reference (null unless kind is 'payment').
WITH request AS (
    SELECT %(event_id)s::text AS event_id, %(event_type)s::text AS event_type, %(kind)s::text AS kind,
           %(purchase_id)s::bigint AS purchase_id, %(amount)s::bigint AS amount,
           upper(%(currency)s::text) AS currency, %(reference)s::text AS reference
),
earlier AS (
    SELECT payment_events.outcome FROM payment_events, request WHERE payment_events.id = request.event_id
),
item AS MATERIALIZED (
    SELECT items.id, items.remaining, items.stock FROM items, request
    WHERE request.kind = 'expiry' AND NOT EXISTS (SELECT FROM earlier)
      AND items.id = (SELECT purchases.item_id FROM purchases WHERE purchases.id = request.purchase_id)
    FOR UPDATE OF items
),
purchase AS MATERIALIZED (
    SELECT purchases.* FROM purchases, request
    WHERE purchases.id = request.purchase_id AND NOT EXISTS (SELECT FROM earlier)
      AND (SELECT count(*) FROM item) >= 0  -- the item's lock first
    FOR UPDATE OF purchases
),
same_payment AS (
    SELECT payment_events.id FROM payment_events, request, purchase
    WHERE payment_events.item_id = purchase.item_id AND payment_events.purchase_id = purchase.id
      AND payment_events.reference = request.reference
),
verdict AS (
    SELECT CASE
               WHEN EXISTS (SELECT FROM earlier) THEN 'duplicate'
               WHEN purchase.id IS NULL THEN 'ignored'
               WHEN request.kind = 'expiry' AND purchase.status = 'held' AND now() < purchase.expires_at
                   THEN 'cancelled'
               WHEN request.kind <> 'payment' THEN 'ignored'
               WHEN EXISTS (SELECT FROM same_payment) THEN 'duplicate'
               WHEN purchase.status = 'confirmed' THEN 'refund_due'
               WHEN purchase.status <> 'held' OR now() >= purchase.expires_at THEN 'late'
               WHEN coalesce(request.amount, purchase.amount) IS NOT DISTINCT FROM purchase.amount
                    AND coalesce(request.currency, purchase.currency) IS NOT DISTINCT FROM purchase.currency
                   THEN 'confirmed'
               ELSE 'under_review'
           END AS outcome,
           coalesce(request.amount, purchase.amount) AS amount,
           coalesce(request.currency, purchase.currency) AS currency
    FROM request LEFT JOIN purchase ON true
),
payment AS (
    SELECT CASE verdict.outcome
               WHEN 'confirmed' THEN 'paid'
               WHEN 'under_review' THEN 'under_review'
               WHEN 'late' THEN 'refund_due'
               WHEN 'refund_due' THEN 'refund_due'
           END AS status
    FROM verdict
),
recorded AS (
    INSERT INTO payment_events (id, type, purchase_id, item_id, outcome, payment_status, amount, currency,
                                reference)
    SELECT request.event_id, request.event_type, request.purchase_id, purchase.item_id, verdict.outcome,
           payment.status,
           CASE WHEN payment.status IS NOT NULL THEN verdict.amount END,
           CASE WHEN payment.status IS NOT NULL THEN verdict.currency END,
           CASE WHEN payment.status IS NOT NULL THEN request.reference END
    FROM request CROSS JOIN verdict CROSS JOIN payment LEFT JOIN purchase ON true
    WHERE NOT EXISTS (SELECT FROM earlier)
    RETURNING id
),
changed AS (
    UPDATE purchases
    SET status = CASE verdict.outcome WHEN 'confirmed' THEN 'confirmed' WHEN 'cancelled' THEN 'cancelled'
                                      ELSE purchases.status END,
        settled_at = CASE WHEN verdict.outcome IN ('confirmed', 'cancelled') THEN now() ELSE purchases.settled_at END,
        payment_event = CASE WHEN payment.status IS NOT NULL THEN request.event_id ELSE purchases.payment_event END
    FROM request, verdict, payment
    WHERE purchases.id = request.purchase_id
      AND (payment.status IS NOT NULL OR verdict.outcome = 'cancelled')
),
returned AS (
    UPDATE items SET remaining = item.remaining + purchase.quantity, stock = item.stock
    FROM item, purchase, verdict
    WHERE items.id = item.id AND verdict.outcome = 'cancelled'
)
SELECT verdict.outcome, (SELECT earlier.outcome FROM earlier) AS first_outcome,
       purchase.id AS purchase_id, purchase.item_id, purchase.quantity,
       CASE WHEN payment.status IS NOT NULL THEN verdict.amount END AS amount,
       CASE WHEN payment.status IS NOT NULL THEN verdict.currency END AS currency
FROM verdict CROSS JOIN payment LEFT JOIN purchase ON true
