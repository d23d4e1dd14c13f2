-- Migration 0001. Creates the items on sale. `remaining` goes down by purchases, under the item's
-- row lock, and up only by `flask sale restock`, which raises `stock` as much.
-- IF NOT EXISTS: a database made before migrations has the table already, as this makes it.
-- Parameters: none.
CREATE TABLE IF NOT EXISTS items (
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
