-- Records a refund made in Stripe for a purchase's money owed back: its oldest payment
-- 'refund_due' (else its oldest 'under_review', a payment set aside and given back), or the one
-- of `payment_reference` when given, becomes 'refunded' with the refund's reference (re_...). A
-- refund reference is
-- recorded once (UNIQUE refund_reference): the same command again finds it and changes nothing.
-- The payment's row is locked (FOR UPDATE) so that two refunds recorded at once take one each.
-- Answers one row: outcome 'refunded' (now), 'already_recorded' (this reference, for this
-- purchase), 'reference_used' (this reference, for another purchase) or 'nothing_owed', and the
-- payment's amount, currency and reference.
-- Parameters: purchase_id, refund_reference, payment_reference (null: the oldest owed back).
WITH request AS (
    SELECT %(purchase_id)s::bigint AS purchase_id, %(refund_reference)s::text AS refund_reference,
           %(payment_reference)s::text AS payment_reference
),
recorded AS (
    SELECT payment_events.* FROM payment_events, request
    WHERE payment_events.refund_reference = request.refund_reference
),
owed AS (
    SELECT payment_events.id FROM payment_events, request
    WHERE payment_events.purchase_id = request.purchase_id
      AND payment_events.payment_status IN ('refund_due', 'under_review')
      AND (request.payment_reference IS NULL OR payment_events.reference = request.payment_reference)
      AND NOT EXISTS (SELECT FROM recorded)
    ORDER BY payment_events.payment_status = 'under_review', payment_events.received_at, payment_events.id
    LIMIT 1
    FOR UPDATE OF payment_events
),
refunded AS (
    UPDATE payment_events SET payment_status = 'refunded', refund_reference = request.refund_reference,
                              refunded_at = now()
    FROM owed, request
    WHERE payment_events.id = owed.id
    RETURNING payment_events.*
),
payment AS (
    SELECT * FROM refunded UNION ALL SELECT * FROM recorded
)
SELECT CASE
           WHEN EXISTS (SELECT FROM refunded) THEN 'refunded'
           WHEN payment.purchase_id = request.purchase_id THEN 'already_recorded'
           WHEN payment.id IS NOT NULL THEN 'reference_used'
           ELSE 'nothing_owed'
       END AS outcome,
       payment.amount, payment.currency, payment.reference
FROM request LEFT JOIN payment ON true
