-- Makes the server read its configuration again, as after ALTER SYSTEM.
-- Parameters: none.
SELECT pg_reload_conf()
