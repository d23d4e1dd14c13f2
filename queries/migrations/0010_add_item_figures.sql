-- Migration 0010. An item with its figures as everyone reads them: units remaining, held (by
-- holds open now) and sold (confirmed), and the state of its sale: 'ended' once its window has
-- closed, else 'sold_out' when nothing remains, else 'scheduled' before its window opens, else
-- 'open'. A hold past its expiry that no purchase or sweep has expired yet counts as remaining
-- already (see purchase_status). Said once here; get_item.sql, list_items.sql and units_held.sql
-- read it. A query of one item reads only that item's held rows (the purchases_held index).
-- Parameters: none.
CREATE VIEW item_figures AS
SELECT items.id, items.name, items.stock, items.remaining + holds.due AS remaining,
       items.stock - items.remaining - holds.due - holds.held AS sold, holds.held,
       items.max_per_user, items.hold_seconds, items.sale_starts_at, items.sale_ends_at,
       CASE
           WHEN now() >= items.sale_ends_at THEN 'ended'
           WHEN items.remaining + holds.due = 0 THEN 'sold_out'
           WHEN now() < items.sale_starts_at THEN 'scheduled'
           ELSE 'open'
       END AS state
FROM items
CROSS JOIN LATERAL (
    SELECT coalesce(sum(purchases.quantity) FILTER (WHERE now() < purchases.expires_at), 0) AS held,
           coalesce(sum(purchases.quantity) FILTER (WHERE now() >= purchases.expires_at), 0) AS due
    FROM purchases
    WHERE purchases.item_id = items.id AND purchases.status = 'held'
) AS holds
