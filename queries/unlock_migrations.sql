-- Releases the migration lock of lock_migrations.sql.
-- Parameters: none.
SELECT pg_advisory_unlock(7460615420251126)
