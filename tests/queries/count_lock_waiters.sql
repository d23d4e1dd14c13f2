-- Counts the service's connections waiting for a lock, to know that a purchase is in flight.
-- Parameters: application_name.
SELECT count(*) AS waiting
FROM pg_stat_activity
WHERE application_name = %(application_name)s AND wait_event_type = 'Lock'
