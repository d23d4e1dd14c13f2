-- Cuts every connection of the service (found by its application_name), for fault tests.
-- Parameters: application_name.
SELECT count(pg_terminate_backend(pid)) AS terminated
FROM pg_stat_activity
WHERE application_name = %(application_name)s
