-- Puts `count` new items on sale, each with the same stock, per-user limit and sale window. The
-- database numbers them: on a freshly made schema they are items 1..count.
-- Parameters: count, stock, max_per_user, sale_starts_at, sale_ends_at (both may be null).
INSERT INTO items (name, stock, remaining, max_per_user, sale_starts_at, sale_ends_at)
SELECT 'Ticket ' || n, %(stock)s, %(stock)s, %(max_per_user)s,
       %(sale_starts_at)s::timestamptz, %(sale_ends_at)s::timestamptz
FROM generate_series(1, %(count)s) AS n
ORDER BY n
