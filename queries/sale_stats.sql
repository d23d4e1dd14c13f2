-- Per item of a list, what its purchases say: buyers (distinct users holding or owning units
-- now), holds (open now), and the times of the first and the last sale, holds included.
-- Items without purchases have no row. Reads only: no row lock is taken.
-- Parameters: item_ids (an array of item ids).
SELECT item_id,
       count(DISTINCT user_id) FILTER (WHERE purchase_status(purchases) IN ('held', 'confirmed')) AS buyers,
       count(*) FILTER (WHERE purchase_status(purchases) = 'held') AS holds,
       min(created_at) AS first_sale_at,
       max(created_at) AS last_sale_at
FROM purchases
WHERE item_id = ANY (%(item_ids)s::integer[])
GROUP BY item_id
