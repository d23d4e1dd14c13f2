-- Test-only: the items table exactly as reset_db.py made it before migrations, to build
-- such a database and prove that `flask --app app db upgrade` upgrades it in place.
-- Creates the items on sale. `remaining` only ever goes down, under the item's row lock.
-- Parameters: none.
CREATE TABLE items (
    id integer PRIMARY KEY CHECK (id >= 1),
    name text NOT NULL,
    stock integer NOT NULL CHECK (stock >= 0),
    remaining integer NOT NULL CHECK (remaining >= 0),
    max_per_user integer NOT NULL CHECK (max_per_user >= 1),
    sale_starts_at timestamptz,
    sale_ends_at timestamptz,
    CHECK (remaining <= stock),
    CHECK (sale_ends_at > sale_starts_at)
)
