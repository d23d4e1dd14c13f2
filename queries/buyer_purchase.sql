-- Reads one purchase if it is this buyer's: another buyer's purchase is no row, as a missing one.
-- Its status is purchase_status(): a hold past its expiry reads 'expired'.
-- Parameters: purchase_id, user_id.
SELECT id, item_id, user_id, quantity, created_at, expires_at, purchase_status(purchases) AS status
FROM purchases
WHERE id = %(purchase_id)s AND user_id = %(user_id)s
