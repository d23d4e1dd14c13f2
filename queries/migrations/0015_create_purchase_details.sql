-- Migration 0015. A purchase as its buyer reads it (GET /purchases, GET /purchases/<id>): its
-- status as purchase_status() says (a hold past its expiry reads 'expired'), what it owes
-- (amount, currency) and its latest payment (purchases.payment_event; payment_* null until one
-- arrived). Said once here; buyer_purchase.sql and buyer_purchases.sql read it.
-- Parameters: none.
CREATE VIEW purchase_details AS
SELECT purchases.id, purchases.item_id, purchases.user_id, purchases.quantity, purchases.created_at,
       purchases.expires_at, purchase_status(purchases) AS status, purchases.amount, purchases.currency,
       payment.payment_status, payment.amount AS payment_amount, payment.currency AS payment_currency,
       payment.reference AS payment_reference
FROM purchases
LEFT JOIN payment_events AS payment ON payment.id = purchases.payment_event
