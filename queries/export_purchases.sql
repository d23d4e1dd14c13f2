-- Lists an item's purchases for fulfilment, in the order they were made, each with its status
-- (purchase_status(): a hold past its expiry reads 'expired'), what it owes and its latest
-- payment. Run through a server-side cursor, fetched in batches: the rows never all sit in the
-- client's memory.
-- Parameters: item_id.
SELECT purchases.id AS purchase_id, purchases.user_id, purchases.quantity, purchases.created_at,
       purchase_status(purchases) AS status, purchases.amount, purchases.currency,
       payment.payment_status AS payment, payment.reference
FROM purchases
LEFT JOIN payment_events AS payment ON payment.id = purchases.payment_event
WHERE purchases.item_id = %(item_id)s
ORDER BY purchases.id
