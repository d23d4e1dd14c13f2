-- Reads one item and how many of its units are sold.
-- Parameters: item_id.
SELECT id, name, stock, remaining, stock - remaining AS sold, max_per_user,
       sale_starts_at, sale_ends_at
FROM items
WHERE id = %(item_id)s
