-- Reads one purchase if it is this buyer's: another buyer's purchase is no row, as a missing one.
-- A hold past its expiry reads 'expired', whether or not a purchase or sweep has expired it yet.
-- Parameters: purchase_id, user_id.
SELECT id, item_id, user_id, quantity, created_at, expires_at,
       CASE WHEN status = 'held' AND now() >= expires_at THEN 'expired' ELSE status END AS status
FROM purchases
WHERE id = %(purchase_id)s AND user_id = %(user_id)s
