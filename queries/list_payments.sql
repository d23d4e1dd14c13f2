-- Lists the payments in one state, oldest first, with their purchase and buyer: 'refund_due'
-- (`flask payments refunds`: money owed back) or 'under_review' (`flask payments review`: not
-- the amount or currency owed, set aside).
-- Parameters: payment_status.
SELECT payment_events.purchase_id, purchases.user_id, purchases.item_id, payment_events.amount,
       payment_events.currency, payment_events.reference, payment_events.received_at,
       payment_events.outcome, purchases.amount AS owed, purchases.currency AS owed_currency
FROM payment_events
JOIN purchases ON purchases.id = payment_events.purchase_id
WHERE payment_events.payment_status = %(payment_status)s
ORDER BY payment_events.received_at, payment_events.id
