-- Test-only: puts items 1..count on sale as reset_db.py did before migrations, naming each id
-- (the items table of that time had no id default).
-- Parameters: count, stock, max_per_user.
INSERT INTO items (id, name, stock, remaining, max_per_user)
SELECT n, 'Ticket ' || n, %(stock)s, %(stock)s, %(max_per_user)s
FROM generate_series(1, %(count)s) AS n
