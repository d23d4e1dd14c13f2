-- Migration 0006. Gives an item an optional payment window: with hold_seconds set, a purchase
-- holds its units for that long while the buyer pays (POST /purchases/<id>/confirm), and units
-- not paid for in time go back on sale. NULL: the item sells at once, as before.
-- Parameters: none.
ALTER TABLE items ADD COLUMN hold_seconds integer CHECK (hold_seconds >= 1)
