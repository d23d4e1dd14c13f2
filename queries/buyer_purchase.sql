-- Reads one purchase if it is this buyer's: another buyer's purchase is no row, as a missing one.
-- Parameters: purchase_id, user_id.
SELECT id, item_id, user_id, quantity, created_at
FROM purchases
WHERE id = %(purchase_id)s AND user_id = %(user_id)s
