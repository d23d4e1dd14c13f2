-- The process ids of the backends serving pgbench's connections, for bench/statements.py --perf.
-- Parameters: none.
SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'
