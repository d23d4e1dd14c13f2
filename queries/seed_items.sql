-- Puts `count` new items on sale, each with the same stock, per-user limit, sale window, payment
-- window and price. The database numbers them: on a freshly made schema they are items 1..count.
-- Parameters: count, stock, max_per_user, sale_starts_at, sale_ends_at (both may be null),
-- hold_seconds (null: they sell at once), price (minor units) and currency (both null: no price).
INSERT INTO items (name, stock, remaining, max_per_user, sale_starts_at, sale_ends_at, hold_seconds, price,
                   currency)
SELECT 'Ticket ' || n, %(stock)s, %(stock)s, %(max_per_user)s,
       %(sale_starts_at)s::timestamptz, %(sale_ends_at)s::timestamptz, %(hold_seconds)s::integer,
       %(price)s::bigint, %(currency)s::text
FROM generate_series(1, %(count)s) AS n
ORDER BY n
