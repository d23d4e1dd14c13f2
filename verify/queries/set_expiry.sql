-- Test-only: moves an open hold's expiry to `seconds` from now (negative: already past), so that
-- tests make holds expire without waiting for them.
-- Parameters: purchase_id, seconds.
UPDATE purchases SET expires_at = now() + make_interval(secs => %(seconds)s::float8)
WHERE id = %(purchase_id)s AND status = 'held'
