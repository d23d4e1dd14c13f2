-- Bounds every following statement of the transaction (lock waits included) to what is
-- left of the request's retry budget.
-- Parameters: milliseconds.
SELECT set_config('statement_timeout', %(milliseconds)s::text, true)
