-- Indexes purchases by item and user, so a user's total for an item is read from the index alone.
-- Parameters: none.
CREATE INDEX purchases_by_user ON purchases (item_id, user_id) INCLUDE (quantity)
