-- Puts a new item on sale, numbered by the database; answers its id.
-- Parameters: name, stock, max_per_user, sale_starts_at, sale_ends_at (both may be null),
-- hold_seconds (the payment window; null: sells at once).
INSERT INTO items (name, stock, remaining, max_per_user, sale_starts_at, sale_ends_at, hold_seconds)
VALUES (%(name)s, %(stock)s, %(stock)s, %(max_per_user)s,
        %(sale_starts_at)s::timestamptz, %(sale_ends_at)s::timestamptz, %(hold_seconds)s::integer)
RETURNING id
