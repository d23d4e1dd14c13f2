-- Lists every purchase of an item, for the proof's and the tests' database checks.
-- Parameters: item_id.
SELECT id, user_id, quantity, idempotency_key
FROM purchases
WHERE item_id = %(item_id)s
ORDER BY id
