-- Migration 0004. Moves the item id sequence of 0003 past the ids already taken, so that the next
-- created item does not collide with one made before it; on an empty table it stays at 1.
-- (setval is strict: max(id) of no rows is null and leaves the sequence alone.)
-- Parameters: none.
SELECT setval(pg_get_serial_sequence('items', 'id'), max(id)) FROM items
