-- Test-only: the purchase statement of the code before payment windows (migrations 0001-0005),
-- to make purchases in a database of that version before upgrading it.
-- Decides one purchase and, if it is a sale, records it and takes the units off the stock, in
-- one statement: the item's row lock is held from here to COMMIT, one round trip later.
-- `item` locks the item's row (FOR UPDATE): purchases of an item queue there, and the row it
-- returns is the latest, whatever committed while this one waited. The purchases are read in the
-- snapshot the statement started with, which misses any purchase committed while it waited.
-- A constraint then makes the INSERT fail instead of selling on that stale view, and db.py runs
-- the statement again in a fresh snapshot: UNIQUE (user_id, idempotency_key) for a missed
-- replay, and UNIQUE (item_id, user_id, bought_before) for the per-user limit, since the first
-- missed purchase of this user and item has exactly the `bought_before` computed here.
-- Answers one row: outcome, one of 'sold', 'replayed', 'idempotency_key_reused',
-- 'item_not_found', 'sale_not_started', 'sale_ended', 'sold_out', 'limit_reached'; for 'sold'
-- and 'replayed' the purchase's id, item_id and quantity; and `remaining`: the stock left right
-- after the purchase for 'sold' and 'replayed', the item's stock left now otherwise.
-- Parameters: item_id, user_id, quantity, idempotency_key.
WITH request AS (
    SELECT %(item_id)s::integer AS item_id, %(user_id)s::text AS user_id,
           %(quantity)s::integer AS quantity, %(idempotency_key)s::text AS idempotency_key
),
item AS (
    SELECT items.* FROM items, request WHERE items.id = request.item_id
    FOR UPDATE OF items
),
earlier AS (
    SELECT purchases.* FROM purchases, request
    WHERE purchases.user_id = request.user_id
      AND purchases.idempotency_key = request.idempotency_key
),
bought AS (
    SELECT coalesce(sum(purchases.quantity), 0) AS quantity FROM purchases, request
    WHERE purchases.item_id = request.item_id AND purchases.user_id = request.user_id
),
verdict AS (
    SELECT CASE
               WHEN earlier.id IS NOT NULL AND earlier.item_id = request.item_id
                    AND earlier.quantity = request.quantity THEN 'replayed'
               WHEN earlier.id IS NOT NULL THEN 'idempotency_key_reused'
               WHEN item.id IS NULL THEN 'item_not_found'
               WHEN now() < item.sale_starts_at THEN 'sale_not_started'
               WHEN now() >= item.sale_ends_at THEN 'sale_ended'
               WHEN item.remaining < request.quantity THEN 'sold_out'
               WHEN bought.quantity + request.quantity > item.max_per_user THEN 'limit_reached'
               ELSE 'sold'
           END AS outcome,
           item.remaining
    FROM request
    CROSS JOIN bought
    LEFT JOIN earlier ON true
    LEFT JOIN item ON true  -- joined last: the lookups above are made before the row lock
),
purchase AS (
    INSERT INTO purchases (item_id, user_id, quantity, idempotency_key, bought_before, remaining_after)
    SELECT request.item_id, request.user_id, request.quantity, request.idempotency_key,
           bought.quantity, verdict.remaining - request.quantity
    FROM request, verdict, bought
    WHERE verdict.outcome = 'sold'
    RETURNING id, item_id, quantity, remaining_after
),
sale AS (
    -- The new values come from the locked row, not from `items`: the UPDATE first builds its row
    -- from the version in the statement's snapshot and checks the constraints on that, before it
    -- moves to the latest version. After a restock (`flask sale restock`) committed while this
    -- statement waited for the lock, that older version may hold remaining 0 and less stock.
    UPDATE items SET remaining = purchase.remaining_after, stock = item.stock
    FROM purchase, item
    WHERE items.id = purchase.item_id
)
SELECT verdict.outcome,
       coalesce(purchase.id, earlier.id) AS purchase_id,
       coalesce(purchase.item_id, earlier.item_id) AS item_id,
       coalesce(purchase.quantity, earlier.quantity) AS quantity,
       coalesce(purchase.remaining_after, earlier.remaining_after, verdict.remaining) AS remaining
FROM verdict
LEFT JOIN purchase ON true
LEFT JOIN earlier ON true
