-- Counts the items and the purchases, for reset_db.py to say what it would delete.
-- Parameters: none.
SELECT (SELECT count(*) FROM items) AS items, (SELECT count(*) FROM purchases) AS purchases
