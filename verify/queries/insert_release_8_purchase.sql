-- A purchase as the code of schema version 8 (holds, before prices) left it: held for
-- `hold_seconds` (null: confirmed at once), its units taken off the item. For the migration tests
-- of prices and payments, which need holds open and sales made before the upgrade.
-- Parameters: item_id, user_id, quantity, hold_seconds.
WITH item AS (
    UPDATE items SET remaining = remaining - %(quantity)s::integer
    WHERE id = %(item_id)s::integer
    RETURNING id, remaining
)
INSERT INTO purchases (item_id, user_id, quantity, idempotency_key, bought_before, remaining_after, status,
                       expires_at)
SELECT item.id, %(user_id)s::text, %(quantity)s::integer, gen_random_uuid()::text,
       coalesce((SELECT sum(quantity) FROM purchases WHERE item_id = item.id AND user_id = %(user_id)s::text), 0),
       item.remaining, CASE WHEN %(hold_seconds)s::integer IS NULL THEN 'confirmed' ELSE 'held' END,
       now() + make_interval(secs => %(hold_seconds)s::integer)
FROM item
RETURNING id
