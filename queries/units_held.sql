-- Units held now by holds open now, for every item with a payment window (0 when none is open):
-- the metrics' gauge, read at each scrape.
-- Parameters: none.
SELECT items.id AS item_id, coalesce(sum(purchases.quantity), 0) AS units
FROM items
LEFT JOIN purchases ON purchases.item_id = items.id AND purchases.status = 'held'
                   AND now() < purchases.expires_at
WHERE items.hold_seconds IS NOT NULL
GROUP BY items.id
