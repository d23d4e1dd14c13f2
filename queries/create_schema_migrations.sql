-- Creates the migrations' bookkeeping, if missing: one row per migration of queries/migrations/
-- applied to this database. Run under the migration lock (lock_migrations.sql).
-- Parameters: none.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
