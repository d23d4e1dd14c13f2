-- Migration 0005. Lets a sale window be empty (start = end): `flask sale end` closes a scheduled
-- sale before it opens by setting both to now. buy_ticket.sql's window is [start, end), so an
-- empty one never sells. items_check1 is the name PostgreSQL gave the window's CHECK in 0001.
-- One ALTER TABLE, so the table is never without a window rule.
-- Parameters: none.
ALTER TABLE items
    DROP CONSTRAINT items_check1,
    ADD CONSTRAINT items_sale_window_check CHECK (sale_ends_at >= sale_starts_at)
