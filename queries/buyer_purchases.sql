-- Lists one buyer's purchases, newest first, a page at a time, as the view purchase_details shows
-- them. The UNIQUE (user_id, idempotency_key) index finds the buyer's rows; a buyer has few, so
-- they are sorted as read.
-- Parameters: user_id, after (the last id of the previous page, null for the first), limit.
SELECT * FROM purchase_details
WHERE user_id = %(user_id)s
  AND (%(after)s::bigint IS NULL OR id < %(after)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s
