-- Bench-only (bench/expiry.py): moves every open hold of an item past its expiry, so that the
-- next purchase or sweep finds them all due.
-- Parameters: item_id.
UPDATE purchases SET expires_at = now() - interval '1 second'
WHERE item_id = %(item_id)s AND status = 'held'
