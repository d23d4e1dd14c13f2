-- Migration 0007. Gives each purchase a state. A purchase of an item without a payment window is
-- 'confirmed' at once and has no expires_at (every purchase made before this migration is one).
-- A hold is 'held' until expires_at, then 'confirmed' (paid in time), 'cancelled' (given up in
-- time; its units returned) or 'expired' (not paid; its units returned). settled_at is the
-- moment (the deciding transaction's now()) it left 'held'. The CHECK makes the database refuse
-- a payment confirmed, or a hold cancelled, at or after its expiry, and an expiry before it.
-- One ALTER TABLE: existing rows get 'confirmed' without being rewritten.
-- Parameters: none.
ALTER TABLE purchases
    ADD COLUMN status text NOT NULL DEFAULT 'confirmed',
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN settled_at timestamptz,
    ADD CONSTRAINT purchases_status_check CHECK (status IN ('held', 'confirmed', 'cancelled', 'expired')),
    ADD CONSTRAINT purchases_hold_check CHECK (CASE
        WHEN expires_at IS NULL THEN status = 'confirmed' AND settled_at IS NULL
        WHEN status = 'held' THEN settled_at IS NULL
        WHEN status = 'expired' THEN settled_at IS NOT NULL AND settled_at >= expires_at
        ELSE settled_at IS NOT NULL AND settled_at < expires_at
    END)
