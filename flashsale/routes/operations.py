"""Running the service: /healthz, /readyz, /metrics and the status page."""
from flask import Blueprint, Response, abort, current_app, render_template

import db
from flashsale import auth, metrics, payments
from flashsale.answers import iso_times, json_response
from flashsale.errors import Problem
from flashsale.routes.inputs import from_operator
from flashsale.routes.items import TIMES, public

bp = Blueprint("operations", __name__)

STATUS_PAGE_ITEMS = 1000  # the status page's first rendering; its script reads every page


@bp.app_template_filter("money")
def money(minor_units, currency):
    return payments.display(minor_units, currency)


@bp.get("/status")
def status_page():
    try:
        items, error = [public(iso_times(row, *TIMES)) for row in db.list_items(0, STATUS_PAGE_ITEMS)], None
    except db.Unavailable:
        items, error = [], "The database did not answer in time; retrying."
    return render_template("status.html", items=items, error=error)


@bp.get("/metrics")
def metrics_page():
    """Prometheus' text format, for METRICS_ALLOW only; to anyone else there is no such page."""
    if not metrics.enabled() or not from_operator():
        abort(404)
    replication = db.ping()
    metrics.replication(replication)
    if replication:  # else the held units keep their last values: the scrape answers at once
        try:
            metrics.units_held(db.units_held())
            metrics.payment_totals(db.payment_totals())
        except db.Unavailable:
            pass
    body, content_type = metrics.exposition()
    return Response(body, 200, content_type=content_type)


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    replication = db.ping()
    metrics.replication(replication)
    if replication:
        return json_response({"status": "ready", "auth": auth.mode(current_app.config["SETTINGS"]), "replication": replication})
    raise Problem(503, "not_ready", "Not ready", f"The database did not answer within {db.READY_TIMEOUT_SECONDS:g} s.")
