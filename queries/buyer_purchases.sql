-- Lists one buyer's purchases, newest first, a page at a time. The UNIQUE (user_id,
-- idempotency_key) index finds the buyer's rows; a buyer has few, so they are sorted as read.
-- Their status is purchase_status(): a hold past its expiry reads 'expired'.
-- Parameters: user_id, after (the last id of the previous page, null for the first), limit.
SELECT id, item_id, user_id, quantity, created_at, expires_at, purchase_status(purchases) AS status
FROM purchases
WHERE user_id = %(user_id)s
  AND (%(after)s::bigint IS NULL OR id < %(after)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s
