-- Locks the item's row until the transaction ends, as buy_ticket.sql does: the tests and
-- chaos.py's lock-hog hold it to make buyers wait.
-- Parameters: item_id.
SELECT id FROM items WHERE id = %(item_id)s FOR UPDATE
