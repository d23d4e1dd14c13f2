-- Reads one item with its figures and the state of its sale (the view item_figures).
-- Parameters: item_id.
SELECT * FROM item_figures WHERE id = %(item_id)s
