-- Takes the migration lock: a session-level advisory lock, so that two processes that upgrade
-- (or reset) the schema at once take turns; the second then finds the migrations applied.
-- Released by unlock_migrations.sql, or when the session ends. The key is this service's own.
-- Parameters: none.
SELECT pg_advisory_lock(7460615420251126)
