"""The HTTP ceilings: the same gunicorn answering a constant 409, no database, through Flask
(`app`, the ceiling the targets are set against) and from a bare WSGI function (`bare`): what
gunicorn's sync worker alone costs, since POST /buy_ticket now runs before Flask's dispatch."""
from flask import Flask

app = Flask(__name__)

SOLD_OUT = ('{"type": "/problems/sold_out", "title": "Sold out", "status": 409, '
            '"detail": "Item 1 has fewer than 1 units left.", "code": "sold_out"}')


@app.get("/readyz")
def readyz():
    return {"status": "ready"}


@app.post("/buy_ticket")
def buy_ticket():
    return SOLD_OUT, 409, {"Content-Type": "application/problem+json"}


READY = b'{"status": "ready"}'
SOLD_OUT_BYTES = SOLD_OUT.encode()


def bare(environ, start_response):
    """The same answers as `app`, with nothing between gunicorn and the bytes."""
    if environ["PATH_INFO"] == "/readyz":
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(READY)))])
        return [READY]
    start_response("409 CONFLICT", [("Content-Type", "application/problem+json"),
                                    ("Content-Length", str(len(SOLD_OUT_BYTES)))])
    return [SOLD_OUT_BYTES]
