-- Lists the migrations applied to this database, in order.
-- Parameters: none.
SELECT version, name, applied_at FROM schema_migrations ORDER BY version
