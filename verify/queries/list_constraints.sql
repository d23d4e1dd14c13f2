-- Test-only: every constraint of the sale's tables with its definition, to prove that an upgrade
-- keeps them.
-- Parameters: none.
SELECT conrelid::regclass::text AS table_name, conname AS name, pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE conrelid IN ('items'::regclass, 'purchases'::regclass)
ORDER BY 1, 2
