-- Lists every purchase with all it holds, its state included, in id order: of one item, or of
-- all when item_id is null. For the tests, and the proof's and chaos runs' history check.
-- Parameters: item_id.
SELECT id, item_id, user_id, quantity, idempotency_key, remaining_after, status, expires_at, settled_at,
       created_at
FROM purchases
WHERE %(item_id)s::integer IS NULL OR item_id = %(item_id)s::integer
ORDER BY id
