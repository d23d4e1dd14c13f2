-- Reads one purchase if it is this buyer's: another buyer's purchase is no row, as a missing one.
-- Its status is purchase_status(): a hold past its expiry reads 'expired'. With what it owes
-- (amount, currency) and its latest payment (purchases.payment_event; payment_* null until one
-- arrived).
-- Parameters: purchase_id, user_id.
SELECT purchases.id, purchases.item_id, purchases.user_id, purchases.quantity, purchases.created_at,
       purchases.expires_at, purchase_status(purchases) AS status, purchases.amount, purchases.currency,
       payment.payment_status, payment.amount AS payment_amount, payment.currency AS payment_currency,
       payment.reference AS payment_reference
FROM purchases
LEFT JOIN payment_events AS payment ON payment.id = purchases.payment_event
WHERE purchases.id = %(purchase_id)s AND purchases.user_id = %(user_id)s
