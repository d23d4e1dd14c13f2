-- Drops every table of the service, with all their rows.
-- Parameters: none.
DROP TABLE IF EXISTS purchases, items
