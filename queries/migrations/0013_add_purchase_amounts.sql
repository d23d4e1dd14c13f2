-- Migration 0013. Gives each purchase what it owes: `amount` (the item's price times the
-- quantity, in minor units) and `currency`, fixed at the moment of sale so that a later price
-- change does not change what a held buyer owes; null for a purchase made before prices or of an
-- item without one. `payment_event` is the latest event that brought money for it, which the API
-- shows as its payment; null until one arrives.
-- Parameters: none.
ALTER TABLE purchases
    ADD COLUMN amount bigint CHECK (amount >= 0),
    ADD COLUMN currency text,
    ADD COLUMN payment_event text REFERENCES payment_events (id),
    ADD CONSTRAINT purchases_amount_currency_check CHECK ((amount IS NULL) = (currency IS NULL))
