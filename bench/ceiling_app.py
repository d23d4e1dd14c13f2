"""The HTTP ceiling: the same Flask and gunicorn stack answering a constant 409, no database."""
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
