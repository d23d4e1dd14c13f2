-- Lists an item's purchases for fulfilment, in the order they were made, each with its status
-- (purchase_status(): a hold past its expiry reads 'expired'). Run through a server-side cursor,
-- fetched in batches: the rows never all sit in the client's memory.
-- Parameters: item_id.
SELECT id AS purchase_id, user_id, quantity, created_at, purchase_status(purchases) AS status
FROM purchases
WHERE item_id = %(item_id)s
ORDER BY id
