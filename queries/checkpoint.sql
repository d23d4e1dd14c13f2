-- Writes every dirty page out now, for deploy/cluster.py: a standby's base backup starts with a
-- checkpoint, and would otherwise wait for a spread-out one (several seconds).
-- Parameters: none.
CHECKPOINT
