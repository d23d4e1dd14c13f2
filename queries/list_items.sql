-- Lists items in id order after a given id, each with its figures and the state of its sale (the
-- view item_figures), and its price, revenue and refunds owed (the view item_money).
-- Parameters: after (the last id of the previous page, 0 for the first), limit.
SELECT * FROM item_figures JOIN item_money USING (id)
WHERE id > %(after)s
ORDER BY id
LIMIT %(limit)s
