-- Test-only: the purchases table exactly as reset_db.py made it before migrations, to build
-- such a database and prove that `flask --app app db upgrade` upgrades it in place.
-- Creates the purchases. Every purchase has an idempotency key: the client's
-- Idempotency-Key header, or one the server made up for a request without it, so
-- that a retry after a lost connection finds the purchase instead of selling twice.
-- `bought_before` is how many units of the item the user had bought before this purchase:
-- a user's purchases of an item form a chain 0, q1, q1 + q2, ..., and the UNIQUE constraint on
-- it stops a purchase decided without seeing the latest link (see buy_ticket.sql). Its index
-- also serves the user's total for the item.
-- `remaining_after` is the item's remaining stock right after this purchase,
-- kept so that a replay answers with the original body.
-- Parameters: none.
CREATE TABLE purchases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id integer NOT NULL REFERENCES items (id),
    user_id text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 64),
    quantity integer NOT NULL CHECK (quantity >= 1),
    idempotency_key text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    bought_before integer NOT NULL CHECK (bought_before >= 0),
    remaining_after integer NOT NULL CHECK (remaining_after >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key),
    UNIQUE (item_id, user_id, bought_before) INCLUDE (quantity)
)
