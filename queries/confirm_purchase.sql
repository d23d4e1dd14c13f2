-- Confirms a buyer's hold: the payment succeeded within the window. The row goes from 'held' to
-- 'confirmed' under its row lock, which the hold's expiry (buy_ticket.sql, expire_holds.sql)
-- takes too: whichever comes first wins, and the other finds the row changed. Confirming takes
-- no units, so the item's row is not locked. `current` reads the row's latest version under the
-- same lock for the answer when this call does not confirm it (or finds nothing once `confirmed`
-- has changed it in this statement).
-- Answers one row: outcome 'confirmed' (now or before), 'purchase_cancelled', 'hold_expired' or
-- 'purchase_not_found' (none, or another buyer's), and the purchase's fields.
-- Parameters: purchase_id, user_id.
WITH request AS (
    SELECT %(purchase_id)s::bigint AS purchase_id, %(user_id)s::text AS user_id
),
confirmed AS (
    UPDATE purchases SET status = 'confirmed', settled_at = now()
    FROM request
    WHERE purchases.id = request.purchase_id AND purchases.user_id = request.user_id
      AND purchases.status = 'held' AND now() < purchases.expires_at
    RETURNING purchases.*
),
current AS (
    SELECT purchases.* FROM purchases, request
    WHERE purchases.id = request.purchase_id AND purchases.user_id = request.user_id
    FOR UPDATE OF purchases
),
purchase AS (
    SELECT * FROM confirmed
    UNION ALL
    SELECT * FROM current WHERE NOT EXISTS (SELECT FROM confirmed)
)
SELECT CASE
           WHEN purchase.status = 'confirmed' THEN 'confirmed'
           WHEN purchase.status = 'cancelled' THEN 'purchase_cancelled'
           WHEN purchase.status = 'expired' OR now() >= purchase.expires_at THEN 'hold_expired'
       END AS outcome,
       purchase.id, purchase.item_id, purchase.user_id, purchase.quantity, purchase.created_at,
       purchase.expires_at, (SELECT count(*) FROM confirmed) = 1 AS changed
FROM purchase
UNION ALL
SELECT 'purchase_not_found', NULL, NULL, NULL, NULL, NULL, NULL, false
WHERE NOT EXISTS (SELECT FROM purchase)
