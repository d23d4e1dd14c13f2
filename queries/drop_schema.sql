-- Drops every table of the service, with all their rows, what is built on them (the views and
-- the function purchase_status) and the migrations' bookkeeping, so that the
-- migrations make the schema again. Items first: purchases lock the item row before they write a
-- purchase, so taking the tables in that order cannot deadlock with them.
-- Parameters: none.
DROP TABLE IF EXISTS items, purchases, payment_events, schema_migrations CASCADE
