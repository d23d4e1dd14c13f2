-- Units held now by holds open now, for every item with a payment window (0 when none is open):
-- the metrics' gauge, read at each scrape.
-- Parameters: none.
SELECT id AS item_id, held AS units FROM item_figures WHERE hold_seconds IS NOT NULL
