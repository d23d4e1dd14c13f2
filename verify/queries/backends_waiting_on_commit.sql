-- The server processes whose COMMIT waits for a synchronous standby, with their application_name.
-- Parameters: none.
SELECT pid, application_name FROM pg_stat_activity WHERE wait_event = 'SyncRep'
