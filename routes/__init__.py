"""The HTTP API, one Flask blueprint per part: purchases, items, and operations (health,
readiness, metrics, the status page). answers.py holds what they share: problem answers and
the checks of what a request sends."""
