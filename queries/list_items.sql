-- Lists items in id order after a given id, each with what is sold and the state of its sale:
-- 'ended' once its window has closed, else 'sold_out' when nothing remains, else 'scheduled'
-- before its window opens, else 'open'.
-- Parameters: after (the last id of the previous page, 0 for the first), limit.
SELECT id, name, stock, remaining, stock - remaining AS sold, max_per_user,
       sale_starts_at, sale_ends_at,
       CASE
           WHEN now() >= sale_ends_at THEN 'ended'
           WHEN remaining = 0 THEN 'sold_out'
           WHEN now() < sale_starts_at THEN 'scheduled'
           ELSE 'open'
       END AS state
FROM items
WHERE id > %(after)s
ORDER BY id
LIMIT %(limit)s
