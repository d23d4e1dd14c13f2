-- Locks the item's row until the transaction ends: purchases of one item queue here.
-- Parameters: item_id.
SELECT id FROM items WHERE id = %(item_id)s FOR UPDATE
