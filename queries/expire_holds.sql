-- Expires every hold past its expires_at and returns its units to its item: the sweep that
-- `flask sale expire` runs, and each worker's sweeper every HOLD_SWEEP_SECONDS. A purchase of the
-- item expires its holds itself (buy_ticket.sql): this one is for items nobody is buying, so that
-- their figures and the metrics catch up. Items whose row lock is held now are skipped (SKIP
-- LOCKED), never waited for: whoever holds the lock is a purchase or another sweep, which expire
-- them. A row goes from 'held' to 'expired' once, under its row lock, so sweeps on several hosts
-- at once return each hold's units once.
-- Answers one row per item that got units back: item_id, holds (expired now) and units.
-- Parameters: none.
WITH item AS MATERIALIZED (
    SELECT items.id, items.remaining, items.stock FROM items
    WHERE items.id IN (SELECT purchases.item_id FROM purchases
                       WHERE purchases.status = 'held' AND purchases.expires_at <= now())
    FOR UPDATE OF items SKIP LOCKED
),
released AS (
    UPDATE purchases SET status = 'expired', settled_at = now()
    FROM item
    WHERE purchases.item_id = item.id AND purchases.status = 'held' AND purchases.expires_at <= now()
    RETURNING purchases.item_id, purchases.quantity
),
freed AS (
    SELECT item_id, count(*) AS holds, sum(quantity) AS units FROM released GROUP BY item_id
)
UPDATE items SET remaining = item.remaining + freed.units, stock = item.stock
FROM item JOIN freed ON freed.item_id = item.id
WHERE items.id = item.id
RETURNING items.id AS item_id, freed.holds, freed.units
