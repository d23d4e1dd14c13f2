-- Makes every COMMIT that wrote something wait for a synchronous standby that does not exist
-- (takes effect at pg_reload_conf()): a server that received COMMIT and does not answer it.
-- Undone by release_commits.sql. Parameters: none.
ALTER SYSTEM SET synchronous_standby_names = 'no_such_standby'
