-- Test-only: every purchase of an item with the columns history.check() reads, in id order.
-- created_at is the now() of the transaction that sold it. (Once holds have status, expires_at
-- and settled_at columns, this selects them too.)
-- Parameters: item_id.
SELECT id, item_id, user_id, quantity, idempotency_key, remaining_after, created_at
FROM purchases
WHERE item_id = %(item_id)s
ORDER BY id
