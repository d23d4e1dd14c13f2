-- Locks a purchase's row until the transaction ends, as a payment event, a cancel or the hold's
-- expiry does: the payment tests hold it to make a webhook wait.
-- Parameters: purchase_id.
SELECT id FROM purchases WHERE id = %(purchase_id)s FOR UPDATE
