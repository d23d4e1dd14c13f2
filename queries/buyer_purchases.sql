-- Lists one buyer's purchases, newest first, a page at a time. The UNIQUE (user_id,
-- idempotency_key) index finds the buyer's rows; a buyer has few, so they are sorted as read.
-- Their status is purchase_status(): a hold past its expiry reads 'expired'; what each owes and
-- its latest payment, as in buyer_purchase.sql.
-- Parameters: user_id, after (the last id of the previous page, null for the first), limit.
SELECT purchases.id, purchases.item_id, purchases.user_id, purchases.quantity, purchases.created_at,
       purchases.expires_at, purchase_status(purchases) AS status, purchases.amount, purchases.currency,
       payment.payment_status, payment.amount AS payment_amount, payment.currency AS payment_currency,
       payment.reference AS payment_reference
FROM purchases
LEFT JOIN payment_events AS payment ON payment.id = purchases.payment_event
WHERE purchases.user_id = %(user_id)s
  AND (%(after)s::bigint IS NULL OR purchases.id < %(after)s::bigint)
ORDER BY purchases.id DESC
LIMIT %(limit)s
