-- Migration 0011. Gives an item a price: `price` in the currency's minor units (4990 for EUR
-- 49.90, 4990 for JPY 4990, as Stripe counts amounts) and `currency`, its ISO 4217 code in
-- capitals. Both are set or neither: an item made before prices, or without one, has no price,
-- and its purchases owe no known amount (a payment for one is set aside for review).
-- Parameters: none.
ALTER TABLE items
    ADD COLUMN price bigint CHECK (price >= 0),
    ADD COLUMN currency text CHECK (currency ~ '^[A-Z]{3}$'),
    ADD CONSTRAINT items_price_currency_check CHECK ((price IS NULL) = (currency IS NULL))
