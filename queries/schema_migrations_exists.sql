-- Tells whether the migrations' bookkeeping table exists: a database made before migrations, or
-- an empty one, has none. Reads only, so a check never changes the database.
-- Parameters: none.
SELECT to_regclass('schema_migrations') IS NOT NULL AS exists
