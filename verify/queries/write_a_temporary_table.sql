-- Writes to the server's log (a temporary table's catalog rows, dropped at COMMIT), so that the
-- transaction's COMMIT waits for synchronous standbys as a purchase's does. Parameters: none.
CREATE TEMPORARY TABLE commit_probe () ON COMMIT DROP
