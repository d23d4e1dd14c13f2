-- Makes the server read its configuration files again, for deploy/cluster.py: the monitor's
-- failover timing (deploy/monitor-failover.conf) is included once the monitor is running.
-- Parameters: none.
SELECT pg_reload_conf()
