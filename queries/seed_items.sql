-- Puts items 1..count on sale, each with the same stock, per-user limit and sale window.
-- Parameters: count, stock, max_per_user, sale_starts_at, sale_ends_at (both may be null).
INSERT INTO items (id, name, stock, remaining, max_per_user, sale_starts_at, sale_ends_at)
SELECT n, 'Ticket ' || n, %(stock)s, %(stock)s, %(max_per_user)s,
       %(sale_starts_at)s::timestamptz, %(sale_ends_at)s::timestamptz
FROM generate_series(1, %(count)s) AS n
