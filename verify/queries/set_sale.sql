-- Changes one item's remaining stock and sale window, for the tests; a null leaves it as it is.
-- Parameters: item_id, remaining, starts_in and ends_in (seconds from now).
UPDATE items
SET remaining = coalesce(%(remaining)s::integer, remaining),
    sale_starts_at = coalesce(now() + make_interval(secs => %(starts_in)s::float8), sale_starts_at),
    sale_ends_at = coalesce(now() + make_interval(secs => %(ends_in)s::float8), sale_ends_at)
WHERE id = %(item_id)s
