-- How many connections the server lets ordinary roles open: max_connections less the ones
-- reserved for superusers.
-- Parameters: none.
SELECT current_setting('max_connections')::integer
       - current_setting('superuser_reserved_connections')::integer AS available
