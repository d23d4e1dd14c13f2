-- Migration 0008. Indexes the holds not yet settled, by item and expiry: a purchase finds the
-- expired holds of its item in it, the sweeper every expired hold, and the item lists the units
-- held now. Only 'held' rows are in it, so it stays as small as the holds open at once.
-- Parameters: none.
CREATE INDEX purchases_held ON purchases (item_id, expires_at) WHERE status = 'held'
