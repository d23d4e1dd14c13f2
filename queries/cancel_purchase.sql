-- Cancels a buyer's hold within its window and returns its units to the item at once. The item's
-- row is locked first (`item`), then the purchase's, in the order buy_ticket.sql takes them; the
-- row goes from 'held' to 'cancelled' under its row lock, which the hold's expiry takes too, so
-- the units come back once, by whichever comes first. `current` reads the row's latest version
-- under the same lock for the answer when this call does not cancel it.
-- Answers one row: outcome 'cancelled' (now or before), 'purchase_confirmed', 'hold_expired' or
-- 'purchase_not_found' (none, or another buyer's), the purchase's fields, and `changed`: this
-- call cancelled it.
-- Parameters: purchase_id, user_id.
WITH request AS (
    SELECT %(purchase_id)s::bigint AS purchase_id, %(user_id)s::text AS user_id
),
item AS MATERIALIZED (
    SELECT items.id, items.remaining, items.stock FROM items
    WHERE items.id = (SELECT purchases.item_id FROM purchases, request
                      WHERE purchases.id = request.purchase_id AND purchases.user_id = request.user_id)
    FOR UPDATE OF items
),
cancelled AS (
    UPDATE purchases SET status = 'cancelled', settled_at = now()
    FROM request
    WHERE purchases.id = request.purchase_id AND purchases.user_id = request.user_id
      AND purchases.item_id = (SELECT id FROM item)
      AND purchases.status = 'held' AND now() < purchases.expires_at
    RETURNING purchases.*
),
returned AS (
    UPDATE items SET remaining = item.remaining + cancelled.quantity, stock = item.stock
    FROM item, cancelled
    WHERE items.id = item.id
),
current AS (
    SELECT purchases.* FROM purchases, request
    WHERE purchases.id = request.purchase_id AND purchases.user_id = request.user_id
      AND purchases.item_id = (SELECT id FROM item)
    FOR UPDATE OF purchases
),
purchase AS (
    SELECT * FROM cancelled
    UNION ALL
    SELECT * FROM current WHERE NOT EXISTS (SELECT FROM cancelled)
)
SELECT CASE
           WHEN purchase.status = 'cancelled' THEN 'cancelled'
           WHEN purchase.status = 'confirmed' THEN 'purchase_confirmed'
           WHEN purchase.status = 'expired' OR now() >= purchase.expires_at THEN 'hold_expired'
       END AS outcome,
       purchase.id, purchase.item_id, purchase.user_id, purchase.quantity, purchase.created_at,
       purchase.expires_at, (SELECT count(*) FROM cancelled) = 1 AS changed
FROM purchase
UNION ALL
SELECT 'purchase_not_found', NULL, NULL, NULL, NULL, NULL, NULL, false
WHERE NOT EXISTS (SELECT FROM purchase)
