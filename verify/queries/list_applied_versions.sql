-- Test-only: the versions recorded in schema_migrations, one row each time one was recorded.
-- Parameters: none.
SELECT version FROM schema_migrations ORDER BY version
