-- Test-only: how many of the service's sessions wait for a lock (a purchase queued on an item's
-- row lock), so that a test acts only once its buyer waits.
-- Parameters: application_name.
SELECT count(*) AS waiting
FROM pg_stat_activity
WHERE application_name = %(application_name)s AND wait_event_type = 'Lock'
