-- Test-only: every purchase's id and state as stored (status, expires_at, settled_at).
-- Parameters: none.
SELECT id, item_id, user_id, quantity, status, expires_at, settled_at FROM purchases ORDER BY id
