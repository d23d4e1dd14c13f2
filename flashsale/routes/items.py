"""Items on sale: GET /items (paged) and GET /items/<id>."""
from flask import Blueprint, request

import db
from db import MAX_INT
from flashsale.answers import iso_times, json_response
from flashsale.errors import Problem, overloaded
from flashsale.routes.inputs import from_operator, parse_page

bp = Blueprint("items", __name__)

PAGE_SIZE = 100  # GET /items: items per page unless `limit` says otherwise
MAX_PAGE_SIZE = 1000
TIMES = ("sale_starts_at", "sale_ends_at")
MONEY = ("revenue", "refunds_owed")  # the shop's own business: for operators only


def public(item):
    """The item as this client may see it: without its money unless the client is an operator
    (METRICS_ALLOW, as for /metrics)."""
    if not from_operator():
        for field in MONEY:
            del item[field]
    return item


@bp.get("/items/<int:item_id>")
def get_item(item_id):
    try:
        item = db.get_item(item_id) if 1 <= item_id <= MAX_INT else None
    except db.Unavailable:
        raise overloaded("The item could not be read in time. Retry later.") from None
    if item is None:
        raise Problem(404, "item_not_found", "Item not found", f"There is no item {item_id}.")
    del item["state"]  # an item's page has always left its state to GET /items
    return json_response(public(iso_times(item, *TIMES)))


@bp.get("/items")
def list_items():
    after, limit = parse_page(request.args, MAX_INT, PAGE_SIZE, MAX_PAGE_SIZE)
    try:
        rows = db.list_items(after, limit + 1)  # one more tells whether a next page exists
    except db.Unavailable:
        raise overloaded("The items could not be read in time. Retry later.") from None
    items = [public(iso_times(row, *TIMES)) for row in rows[:limit]]
    next_after = items[-1]["id"] if len(rows) > limit else None
    return json_response({
        "items": items,
        "next_after": next_after,
        "next": None if next_after is None else f"/items?after={next_after}&limit={limit}",
    })
