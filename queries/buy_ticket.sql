-- Decides one purchase of an item sold at once (no payment window) and, if it is a sale, records
-- it and takes the units off the stock, in one statement: the item's row lock is held from here to
-- COMMIT, one round trip later. On an item with a payment window it answers 'payment_window' and
-- changes nothing: db.py then runs buy_held_ticket.sql in the same transaction, under this lock.
-- This one is kept lean because the item's lock binds a hot item: behind it, PostgreSQL's
-- EvalPlanQual sets up every subplan of the statement again, twice (docs/performance.md).
-- `item` locks the item's row (FOR UPDATE): purchases of an item queue there, and the row it
-- returns is the latest, whatever committed while this one waited. The purchases are read in the
-- snapshot the statement started with, which misses any purchase committed while it waited.
-- A constraint then makes the INSERT fail instead of selling on that stale view, and db.py runs
-- the statement again in a fresh snapshot: UNIQUE (user_id, idempotency_key) for a missed
-- replay, and UNIQUE (item_id, user_id, bought_before) for the per-user limit, since the first
-- missed purchase of this user and item has exactly the `bought_before` computed here. An item
-- sold at once never has a hold (hold_seconds is set at creation only), so every purchase of it
-- counts against the limit for good.
-- Answers one row with the columns of buy_held_ticket.sql: outcome, one of 'sold', 'replayed',
-- 'idempotency_key_reused', 'item_not_found', 'sale_not_started', 'sale_ended', 'sold_out',
-- 'limit_reached', 'payment_window'; for 'sold' and 'replayed' the purchase's id, item_id,
-- quantity, amount and currency (the price times the quantity, fixed now); `remaining`: the units left right after the purchase for 'sold' and 'replayed', the
-- item's units left now otherwise; expires_at (a replayed key's), `expired`, `released` and
-- `units_return_in`, which holds alone make; `payment_window`: whether the item has one.
-- Parameters: item_id, user_id, quantity, idempotency_key.
WITH item AS (
    SELECT items.* FROM items WHERE items.id = %(item_id)s::integer
    FOR UPDATE OF items
),
earlier AS (
    SELECT purchases.* FROM purchases
    WHERE purchases.user_id = %(user_id)s::text AND purchases.idempotency_key = %(idempotency_key)s::text
),
bought AS (
    SELECT coalesce(sum(purchases.quantity), 0) AS quantity FROM purchases
    WHERE purchases.item_id = %(item_id)s::integer AND purchases.user_id = %(user_id)s::text
),
verdict AS (
    SELECT CASE
               WHEN item.hold_seconds IS NOT NULL THEN 'payment_window'
               WHEN earlier.id IS NOT NULL AND earlier.item_id = %(item_id)s::integer
                    AND earlier.quantity = %(quantity)s::integer THEN 'replayed'
               WHEN earlier.id IS NOT NULL THEN 'idempotency_key_reused'
               WHEN item.id IS NULL THEN 'item_not_found'
               WHEN now() < item.sale_starts_at THEN 'sale_not_started'
               WHEN now() >= item.sale_ends_at THEN 'sale_ended'
               WHEN item.remaining < %(quantity)s::integer THEN 'sold_out'
               WHEN bought.quantity + %(quantity)s::integer > item.max_per_user THEN 'limit_reached'
               ELSE 'sold'
           END AS outcome,
           item.remaining,
           item.hold_seconds IS NOT NULL AS payment_window
    FROM bought
    LEFT JOIN earlier ON true
    LEFT JOIN item ON true
),
purchase AS (
    INSERT INTO purchases (item_id, user_id, quantity, idempotency_key, bought_before, remaining_after,
                           amount, currency)
    SELECT item.id, %(user_id)s::text, %(quantity)s::integer, %(idempotency_key)s::text,
           bought.quantity, item.remaining - %(quantity)s::integer,
           item.price * %(quantity)s::integer, item.currency
    FROM item, bought, verdict
    WHERE verdict.outcome = 'sold'
    RETURNING id, item_id, quantity, remaining_after, amount, currency
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
       coalesce(purchase.remaining_after, earlier.remaining_after, verdict.remaining) AS remaining,
       earlier.expires_at,
       coalesce(purchase.amount, earlier.amount) AS amount,
       coalesce(purchase.currency, earlier.currency) AS currency,
       0 AS expired,
       0 AS released,
       NULL::numeric AS units_return_in,
       verdict.payment_window
FROM verdict
LEFT JOIN purchase ON true
LEFT JOIN earlier ON true
