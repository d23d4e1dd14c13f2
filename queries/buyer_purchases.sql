-- Lists one buyer's purchases, newest first, a page at a time. The UNIQUE (user_id,
-- idempotency_key) index finds the buyer's rows; a buyer has few, so they are sorted as read.
-- A hold past its expiry reads 'expired', as in buyer_purchase.sql.
-- Parameters: user_id, after (the last id of the previous page, null for the first), limit.
SELECT id, item_id, user_id, quantity, created_at, expires_at,
       CASE WHEN status = 'held' AND now() >= expires_at THEN 'expired' ELSE status END AS status
FROM purchases
WHERE user_id = %(user_id)s
  AND (%(after)s::bigint IS NULL OR id < %(after)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s
