-- Reads one item: its units remaining, held (by holds open now) and sold (confirmed). A hold past
-- its expiry that no purchase or sweep has expired yet counts as remaining already.
-- Parameters: item_id.
SELECT items.id, items.name, items.stock, items.remaining + holds.due AS remaining,
       items.stock - items.remaining - holds.due - holds.held AS sold, holds.held,
       items.max_per_user, items.hold_seconds, items.sale_starts_at, items.sale_ends_at
FROM items
CROSS JOIN LATERAL (
    SELECT coalesce(sum(purchases.quantity) FILTER (WHERE now() < purchases.expires_at), 0) AS held,
           coalesce(sum(purchases.quantity) FILTER (WHERE now() >= purchases.expires_at), 0) AS due
    FROM purchases
    WHERE purchases.item_id = items.id AND purchases.status = 'held'
) AS holds
WHERE items.id = %(item_id)s
