-- Test-only: records `count` purchases of one unit of an item by as many users, straight into
-- the table (the item's stock is left alone), to export a large sale.
-- Parameters: item_id, count.
INSERT INTO purchases (item_id, user_id, quantity, idempotency_key, bought_before, remaining_after)
SELECT %(item_id)s, 'bulk-' || n, 1, 'bulk-key-' || n, 0, 0
FROM generate_series(1, %(count)s) AS n
