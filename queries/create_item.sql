-- Puts a new item on sale, numbered by the database; answers its id.
-- Parameters: name, stock, max_per_user, sale_starts_at, sale_ends_at (both may be null),
-- hold_seconds (the payment window; null: sells at once), price (in the currency's minor units)
-- and currency (ISO 4217), both null for an item without a price.
INSERT INTO items (name, stock, remaining, max_per_user, sale_starts_at, sale_ends_at, hold_seconds, price,
                   currency)
VALUES (%(name)s, %(stock)s, %(stock)s, %(max_per_user)s,
        %(sale_starts_at)s::timestamptz, %(sale_ends_at)s::timestamptz, %(hold_seconds)s::integer,
        %(price)s::bigint, %(currency)s::text)
RETURNING id
