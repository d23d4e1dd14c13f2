"""The HTTP API, one Flask blueprint per part: purchases, items, and operations (health,
readiness, metrics, the status page); fast_path answers POST /buy_ticket before Flask's
dispatch, and inputs reads and checks what a request sends."""
