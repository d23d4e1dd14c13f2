-- Reads one purchase if it is this buyer's, as the view purchase_details shows it: another
-- buyer's purchase is no row, as a missing one.
-- Parameters: purchase_id, user_id.
SELECT * FROM purchase_details
WHERE id = %(purchase_id)s AND user_id = %(user_id)s
