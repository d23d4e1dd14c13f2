-- How this server keeps a commit before acknowledging it: 'synchronous' when
-- synchronous_standby_names is set, so that COMMIT returns only once a standby has flushed the
-- commit (a standby that is away makes commits wait); 'async' when this server alone may hold
-- an acknowledged commit: a server without a standby, or a pg_auto_failover primary whose
-- standby is away (wait_primary: the keeper empties synchronous_standby_names so that sales go on).
-- Parameters: none.
SELECT CASE WHEN current_setting('synchronous_standby_names') <> '' THEN 'synchronous'
            ELSE 'async'
       END AS replication
