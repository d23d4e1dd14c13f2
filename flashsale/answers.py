"""Answers ready to send: JSON bodies as WSGI triples and as Flask responses, and times as text.
POST /buy_ticket answers outside Flask (routes/fast_path.py) and inside it, byte for byte the
same, so both go through Answer."""
import json
from datetime import timezone
from typing import NamedTuple

from flask import Response, request
from werkzeug.http import HTTP_STATUS_CODES

from flashsale import observe


class Answer(NamedTuple):
    """An answer ready for WSGI. `code` is the problem's, for the access log."""
    status: str  # "409 CONFLICT", as werkzeug writes it
    headers: tuple
    body: bytes
    code: str | None = None


def json_answer(body, status=200, headers=(), content_type="application/json", code=None):
    """The headers in the order werkzeug's Response puts them: the given ones, then the type and
    the length."""
    data = json.dumps(body).encode()
    return Answer(f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}",
                  (*headers, ("Content-Type", content_type), ("Content-Length", str(len(data)))), data, code)


def response(answer):
    """The Answer as Flask's Response."""
    if answer.code is not None:
        request.environ[observe.CODE_KEY] = answer.code  # for the access log
    return Response(answer.body, answer.status, answer.headers)


def json_response(body, status=200, headers=None, mimetype="application/json"):
    return Response(json.dumps(body), status, headers, mimetype=mimetype)


def utc_iso(moment):
    """A datetime as ISO 8601 in UTC, to the microsecond: 2026-12-02T13:00:05.123456Z."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_times(row, *fields):
    """The row with these fields (datetimes or None) as ISO 8601 text."""
    for field in fields:
        if row[field] is not None:
            row[field] = row[field].isoformat()
    return row
