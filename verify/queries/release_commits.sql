-- Undoes hold_commits.sql (takes effect at pg_reload_conf()): waiting COMMITs complete.
-- Parameters: none.
ALTER SYSTEM RESET synchronous_standby_names
