-- Reads one item with its figures and the state of its sale (the view item_figures), and its
-- price, revenue and refunds owed (the view item_money).
-- Parameters: item_id.
SELECT * FROM item_figures JOIN item_money USING (id) WHERE id = %(item_id)s
