-- Checks that the database answers.
-- Parameters: none.
SELECT 1
