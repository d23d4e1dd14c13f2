-- Adds units to an item: its stock and its remaining units grow by as much, so sold (stock -
-- remaining) is unchanged. One short UPDATE under the item's row lock, serialized with purchases.
-- Answers the item's id, stock and remaining, or no row when there is no such item.
-- Parameters: item_id, units.
UPDATE items
SET stock = stock + %(units)s, remaining = remaining + %(units)s
WHERE id = %(item_id)s
RETURNING id, stock, remaining
