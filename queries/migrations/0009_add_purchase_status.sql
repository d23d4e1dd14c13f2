-- Migration 0009. A purchase's status as buyers, operators and the metrics see it: a hold past
-- its expiry is 'expired' at once, whether or not a purchase or a sweep has expired its row yet
-- (they return its units; nothing else waits for them). Said once here, used as
-- purchase_status(purchases) by every statement that reads a status; an SQL function, inlined
-- into the statement that calls it.
-- Parameters: none.
CREATE FUNCTION purchase_status(purchase purchases) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN purchase.status = 'held' AND now() >= purchase.expires_at THEN 'expired'
                ELSE purchase.status
           END
$$
