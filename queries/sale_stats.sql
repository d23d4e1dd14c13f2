-- Per item of a list, what its purchases say: buyers (distinct users; a user's first purchase of
-- an item is the one with bought_before = 0), and the times of the first and the last sale.
-- Items without purchases have no row. Reads only: no row lock is taken.
-- Parameters: item_ids (an array of item ids).
SELECT item_id,
       count(*) FILTER (WHERE bought_before = 0) AS buyers,
       min(created_at) AS first_sale_at,
       max(created_at) AS last_sale_at
FROM purchases
WHERE item_id = ANY (%(item_ids)s::integer[])
GROUP BY item_id
