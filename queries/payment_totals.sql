-- Money per item, currency and payment state: confirmed ('paid'), owed back ('refund_due'),
-- given back ('refunded') and set aside ('under_review'), in minor units; the metrics' gauges,
-- read at each scrape. The index of UNIQUE (item_id, purchase_id, reference) finds them.
-- Parameters: none.
SELECT item_id, currency, payment_status, count(*) AS payments, coalesce(sum(amount), 0)::bigint AS amount
FROM payment_events
WHERE payment_status IS NOT NULL AND item_id IS NOT NULL AND currency IS NOT NULL
GROUP BY item_id, currency, payment_status
