-- Test-only: every item's row as stored, to prove that an upgrade or a refused command changes none.
-- Parameters: none.
SELECT * FROM items ORDER BY id
