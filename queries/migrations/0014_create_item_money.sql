-- Migration 0014. An item's money as everyone reads it, beside its figures (the view
-- item_figures): its price and currency, its revenue (minor units of the payments that confirmed
-- a hold) and refunds_owed (payments owed back, docs/payments.md). Said once here; get_item.sql
-- and list_items.sql join it to item_figures by id. An item's payments are found by the index of
-- payment_events' UNIQUE (item_id, purchase_id, reference).
-- Parameters: none.
CREATE VIEW item_money AS
SELECT items.id, items.price, items.currency, money.revenue, money.refunds_owed
FROM items
CROSS JOIN LATERAL (
    SELECT coalesce(sum(payment_events.amount) FILTER (WHERE payment_events.payment_status = 'paid'), 0)::bigint
               AS revenue,
           count(*) FILTER (WHERE payment_events.payment_status = 'refund_due') AS refunds_owed
    FROM payment_events
    WHERE payment_events.item_id = items.id
) AS money
