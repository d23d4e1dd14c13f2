-- Closes an item's sale window now: purchases that start after this commits answer sale_ended.
-- A window that has closed already keeps its end. A sale that has not started yet gets the empty
-- window [now, now), which never sells (migration 0005 allows it). One short UPDATE: the item's
-- row lock is held as briefly as a purchase holds it.
-- Answers the item's id and its window, or no row when there is no such item.
-- Parameters: item_id.
UPDATE items
SET sale_starts_at = CASE WHEN sale_starts_at > now() THEN now() ELSE sale_starts_at END,
    sale_ends_at = CASE WHEN sale_ends_at <= now() THEN sale_ends_at ELSE now() END
WHERE id = %(item_id)s
RETURNING id, sale_starts_at, sale_ends_at
