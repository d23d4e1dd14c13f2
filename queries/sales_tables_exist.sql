-- Tells whether the database has the sale's tables (items and purchases): reset_db.py counts
-- what it would delete only then.
-- Parameters: none.
SELECT to_regclass('items') IS NOT NULL AND to_regclass('purchases') IS NOT NULL AS exist
