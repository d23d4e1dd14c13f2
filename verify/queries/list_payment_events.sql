-- Every stored payment event, in the order received: the payment tests' view of what was written.
-- Parameters: none.
SELECT id, type, purchase_id, item_id, outcome, payment_status, amount, currency, reference, refund_reference
FROM payment_events
ORDER BY received_at, id
