-- Lists the sessions of an application whose COMMIT waits for the synchronous standby to confirm
-- it (wait event SyncRep), for the cluster's tests.
-- Parameters: application_name.
SELECT pid
FROM pg_stat_activity
WHERE application_name = %(application_name)s AND wait_event = 'SyncRep'
