-- Decides one purchase and, if it is a sale, records it and takes the units off the stock, in
-- one statement, after expiring the item's holds past their expiry: the item's row lock is held
-- from here to COMMIT, one round trip later. On an item with a payment window (hold_seconds) the
-- sale is a hold, 'held' until expires_at. It serves any item, but buy_ticket.sql (sold at once)
-- and buy_held_ticket.sql (a payment window, nothing due) do less behind the lock: db.py runs
-- this one when a hold is due (docs/performance.md, What the holds cost purchases).
-- `item` locks the item's row (FOR UPDATE): purchases of an item queue there, and the row it
-- returns is the latest, whatever committed while this one waited. The purchases are read in the
-- snapshot the statement started with, which misses any purchase committed while it waited.
-- A constraint then makes the INSERT fail instead of selling on that stale view, and db.py runs
-- the statement again in a fresh snapshot: UNIQUE (user_id, idempotency_key) for a missed
-- replay, and UNIQUE (item_id, user_id, bought_before) for the per-user limit, since the first
-- missed purchase of this user and item has exactly the `bought_before` computed here (the units
-- the user took of the item before, released or not).
-- A hold's state can change while this waits (confirmed, cancelled, expired), so the user's
-- open holds are read again under row locks (`holds`), and the item's holds past their expiry
-- are expired here (`released`) and their units returned in the same UPDATE as the sale: a row
-- goes from 'held' to 'expired' once, under its row lock, so its units come back once. Both take
-- their row locks after the item's, as cancel_purchase.sql does: `item` is read first, through
-- `(SELECT id FROM item)`.
-- Answers one row: outcome, one of 'sold', 'replayed', 'idempotency_key_reused',
-- 'item_not_found', 'sale_not_started', 'sale_ended', 'sold_out', 'limit_reached'; for 'sold'
-- and 'replayed' the purchase's id, item_id, quantity, amount and currency (the price times the
-- quantity, fixed now) and, for a hold, expires_at; `remaining`: the units left right after the
-- purchase for 'sold' and 'replayed', the item's units left now otherwise; `expired` and `released`: the holds this statement expired and their units;
-- `units_return_in`: when nothing is left, the seconds until the first hold open now expires
-- (null if none is open); `payment_window`: whether the item has one.
-- Parameters: item_id, user_id, quantity, idempotency_key.
WITH item AS MATERIALIZED (
    SELECT items.* FROM items WHERE items.id = %(item_id)s::integer
    FOR UPDATE OF items
),
earlier AS (
    SELECT purchases.* FROM purchases
    WHERE purchases.user_id = %(user_id)s::text AND purchases.idempotency_key = %(idempotency_key)s::text
),
taken AS (
    -- Purchases sold at once are confirmed for good: the snapshot's view of them is exact.
    SELECT coalesce(sum(purchases.quantity), 0) AS quantity,
           coalesce(sum(purchases.quantity) FILTER (WHERE purchases.expires_at IS NULL), 0) AS kept
    FROM purchases
    WHERE purchases.item_id = %(item_id)s::integer AND purchases.user_id = %(user_id)s::text
),
holds AS (
    -- Cancelled and expired holds stay so: only the others can change while this waits.
    SELECT purchases.quantity, purchases.status, purchases.expires_at FROM purchases
    WHERE purchases.item_id = (SELECT id FROM item) AND purchases.user_id = %(user_id)s::text
      AND purchases.expires_at IS NOT NULL AND purchases.status IN ('held', 'confirmed')
    FOR UPDATE OF purchases
),
released AS (
    UPDATE purchases SET status = 'expired', settled_at = now()
    WHERE purchases.item_id = (SELECT id FROM item)
      AND purchases.status = 'held' AND purchases.expires_at <= now()
    RETURNING purchases.quantity
),
units AS (
    -- The user's units held or confirmed: a hold this statement expires is not among them,
    -- whether `holds` saw it before `released` changed it or skipped it after.
    SELECT taken.quantity AS taken,
           taken.kept + (SELECT coalesce(sum(holds.quantity), 0) FROM holds
                         WHERE holds.status = 'confirmed' OR now() < holds.expires_at) AS active,
           freed.expired, freed.released
    FROM taken, (SELECT count(*) AS expired, coalesce(sum(released.quantity), 0) AS released
                 FROM released) AS freed
),
verdict AS (
    SELECT CASE
               WHEN earlier.id IS NOT NULL AND earlier.item_id = %(item_id)s::integer
                    AND earlier.quantity = %(quantity)s::integer THEN 'replayed'
               WHEN earlier.id IS NOT NULL THEN 'idempotency_key_reused'
               WHEN item.id IS NULL THEN 'item_not_found'
               WHEN now() < item.sale_starts_at THEN 'sale_not_started'
               WHEN now() >= item.sale_ends_at THEN 'sale_ended'
               WHEN item.remaining + units.released < %(quantity)s::integer THEN 'sold_out'
               WHEN units.active + %(quantity)s::integer > item.max_per_user THEN 'limit_reached'
               ELSE 'sold'
           END AS outcome,
           item.remaining + units.released AS available,
           now() + make_interval(secs => item.hold_seconds) AS expires_at,
           item.hold_seconds IS NOT NULL AS payment_window
    FROM units
    LEFT JOIN earlier ON true
    LEFT JOIN item ON true
),
purchase AS (
    INSERT INTO purchases (item_id, user_id, quantity, idempotency_key, bought_before, remaining_after,
                           status, expires_at, amount, currency)
    SELECT item.id, %(user_id)s::text, %(quantity)s::integer, %(idempotency_key)s::text,
           units.taken, verdict.available - %(quantity)s::integer,
           CASE WHEN verdict.expires_at IS NULL THEN 'confirmed' ELSE 'held' END, verdict.expires_at,
           item.price * %(quantity)s::integer, item.currency
    FROM item, units, verdict
    WHERE verdict.outcome = 'sold'
    RETURNING id, item_id, quantity, remaining_after, expires_at, amount, currency
),
stock AS (
    -- The new values come from the locked row, not from `items`: the UPDATE first builds its row
    -- from the version in the statement's snapshot and checks the constraints on that, before it
    -- moves to the latest version. After a restock (`flask sale restock`) committed while this
    -- statement waited for the lock, that older version may hold remaining 0 and less stock.
    -- It runs when units were released even if nothing is sold.
    UPDATE items SET remaining = verdict.available - coalesce(purchase.quantity, 0), stock = item.stock
    FROM item CROSS JOIN verdict LEFT JOIN purchase ON true
    WHERE items.id = item.id AND (purchase.id IS NOT NULL OR verdict.available > item.remaining)
)
SELECT verdict.outcome,
       coalesce(purchase.id, earlier.id) AS purchase_id,
       coalesce(purchase.item_id, earlier.item_id) AS item_id,
       coalesce(purchase.quantity, earlier.quantity) AS quantity,
       coalesce(purchase.remaining_after, earlier.remaining_after, verdict.available) AS remaining,
       coalesce(purchase.expires_at, earlier.expires_at) AS expires_at,
       coalesce(purchase.amount, earlier.amount) AS amount,
       coalesce(purchase.currency, earlier.currency) AS currency,
       units.expired,
       units.released,
       CASE WHEN verdict.available - coalesce(purchase.quantity, 0) = 0 THEN
           extract(epoch FROM least(purchase.expires_at,
                                    (SELECT min(purchases.expires_at) FROM purchases
                                     WHERE purchases.item_id = %(item_id)s::integer
                                       AND purchases.status = 'held' AND purchases.expires_at > now())) - now())
       END AS units_return_in,
       verdict.payment_window
FROM verdict
CROSS JOIN units
LEFT JOIN purchase ON true
LEFT JOIN earlier ON true
