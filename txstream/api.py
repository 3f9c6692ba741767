"""The JSON API: sums, transaction lists, recent transactions, window totals, health.

Amounts are strings with two decimals, times ISO-8601 UTC. Every error, including an
unknown path under /api, is a JSON object `{"error": "..."}`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import redis
from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from txstream import live, openapi, queries, redisconn, replica, system
from txstream.deadletters import DeadLetters, Unreadable
from txstream.money import format_amount
from txstream.params import (
    InvalidParameter,
    parse_after,
    parse_before,
    parse_dead_before,
    parse_hours,
    parse_limit,
    parse_user_id,
    span,
)
from txstream.recent import RECENT_SIZE, RecentLists
from txstream.times import format_time
from txstream.transaction import Transaction, to_json
from txstream.windows import window_start

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def owns(path: str) -> bool:
    """Whether `path` belongs to the API, so its errors are JSON."""
    return path == "/api" or path.startswith("/api/") or path == "/healthz"


def http_error(exc: HTTPException) -> Response:
    """`exc` as a JSON error response (keeps its status and headers, e.g. Allow)."""
    message = f"no such endpoint: {request.path}" if exc.code == 404 else exc.description
    response = exc.get_response()
    response.data = json.dumps({"error": message})
    response.content_type = "application/json"
    return response


@bp.errorhandler(InvalidParameter)
def invalid_parameter(exc: InvalidParameter):
    """A bad parameter: 400 with the reason."""
    return jsonify(error=str(exc)), 400


@bp.get("/api/users/<user_id>/sum")
def user_sum(user_id: str):
    """Count and exact sum of the user's transactions with `now - hours < ts <= now`."""
    uid = parse_user_id(user_id)
    hours = parse_hours(request.args.get("hours"), current_app.config["WINDOW_HOURS"])
    result = read_user_sum(uid, hours)
    return {
        "user_id": uid,
        "hours": _json_number(hours),
        "from": format_time(result.start),
        "to": format_time(result.end),
        "count": result.count,
        "sum": format_amount(result.total),
    }


class UserSum(NamedTuple):
    """A user's count and exact sum over `start < ts <= end`."""

    start: datetime
    end: datetime
    count: int
    total: Decimal


def read_user_sum(user_id: int, hours: Decimal) -> UserSum:
    """The user's sum over the last `hours` by the app's CLOCK (the API's and the page's)."""
    end = current_app.config["CLOCK"]()
    start = end - span(hours)
    layout = current_app.config["LAYOUT"]
    count, total = replica.read(
        lambda conn: queries.checked_user_sum(conn, user_id, start, end, layout)
    )
    return UserSum(start, end, count, total)


@bp.get("/api/users/<user_id>/transactions")
def user_transactions(user_id: str):
    """The user's transactions, newest first, one page at a time."""
    return _page(parse_user_id(user_id))


@bp.get("/api/transactions")
def all_transactions():
    """The transactions of all users, newest first, one page at a time."""
    return _page(None)


@bp.get("/api/users/<user_id>/recent")
def user_recent(user_id: str):
    """The user's latest transactions (`read_recent`)."""
    return {"items": [to_json(tx) for tx in read_recent(parse_user_id(user_id))]}


def read_recent(user_id: int) -> list[Transaction]:
    """The user's RECENT_SIZE newest transactions by (time, txn_id), newest first (the
    API's and the page's): from the user's Redis list while Redis holds them; else, while
    Redis rebuilds them or cannot be trusted with them, the same from the database."""
    lists = RecentLists(current_app.config["REDIS"], current_app.config["KEYS"])
    txns = lists.latest(user_id)
    if txns is None:
        txns, _ = replica.read(
            lambda conn: queries.transactions_page(conn, RECENT_SIZE, user_id=user_id)
        )
    return txns


@bp.get("/api/users/<user_id>/windows")
def user_windows(user_id: str):
    """The user's window totals, newest window first."""
    uid = parse_user_id(user_id)
    limit = parse_limit(request.args.get("limit"))
    length = span(current_app.config["WINDOW_HOURS"])
    rows = replica.read(lambda conn: queries.user_windows(conn, uid, limit))
    items = [
        {
            "user_id": row.user_id,
            "window_start": format_time(row.window_start),
            "window_end": format_time(row.window_start + length),
            "tx_count": row.tx_count,
            "amount_sum": format_amount(row.amount_sum),
            "amount_min": format_amount(row.amount_min),
            "amount_max": format_amount(row.amount_max),
            "updated_at": format_time(row.updated_at),
        }
        for row in rows
    ]
    return {"items": items}


@bp.get("/api/dead-letters")
def dead_letters():
    """The messages that could not be stored, with their reasons: newest first, paged."""
    limit = parse_limit(request.args.get("limit"))
    before = parse_dead_before(request.args.get("before"))
    letters, cursor = read_dead_letters(limit, before)
    return {
        "items": [letter.to_json() for letter in letters],
        "next": None if cursor is None else str(cursor),
    }


def read_dead_letters(limit: int, before: int | None):
    """A page of the dead letters and the next page's position (the API's and the page's);
    a dead-letter key that is not a list is a 503 that says so."""
    letters = DeadLetters(current_app.config["REDIS"], current_app.config["KEYS"])
    try:
        return letters.page(limit, before)
    except Unreadable as exc:
        log.error("dead letters: %s", exc)
        abort(503, description=f"{exc}; an operator must look at it")


@bp.get("/api/live")
def live_data():
    """What the dashboard polls: the transactions newer than `after`, the ingest rate, the
    top users of the current window, the counts and health (txstream.live)."""
    after = parse_after(request.args.get("after"))
    config = current_app.config
    window = window_start(config["CLOCK"](), int(span(config["WINDOW_HOURS"]).total_seconds()))
    try:
        return live.live(config["REDIS"], config["KEYS"], replica.read, after, window)
    except redis.ResponseError as exc:  # e.g. a key of another type: not ours to mend
        log.error("live: Redis refused a read: %s", exc)
        abort(503, description=f"Redis refused a read ({exc}); an operator must look at it")


@bp.get("/api/openapi.json")
def openapi_document():
    """The API's OpenAPI 3.1 document (open: no token needed)."""
    return openapi.document(current_app.config["WINDOW_HOURS"])


@bp.get("/api/docs")
def docs():
    """The OpenAPI document as a web page (open: no token needed)."""
    spec = openapi.document(current_app.config["WINDOW_HOURS"])
    return render_template(
        "api_docs.html",
        spec=spec,
        operations=openapi.operations(spec),
        rule=openapi.rule,
        public_url=current_app.config["PUBLIC_URL"],
    )


@bp.get("/healthz")
def healthz():
    """200 when Redis and the database answer, else 503 naming the one that is down."""
    status = {"redis": _redis_status(), "database": _database_status()}
    code = 200 if all(value == "ok" for value in status.values()) else 503
    return status, code


@bp.get("/api/system")
def system_status():
    """The subscribers, the stream, the dead letters, the layout and the servers' health;
    200 even while Redis or the database is down (it says which)."""
    return system.app_status()


def _page(user_id: int | None) -> dict:
    limit = parse_limit(request.args.get("limit"))
    before = parse_before(request.args.get("before"))
    txns, cursor = replica.read(
        lambda conn: queries.transactions_page(conn, limit, user_id=user_id, before=before)
    )
    return {"items": [to_json(tx) for tx in txns], "next": cursor}


def _redis_status() -> str:
    try:
        current_app.config["REDIS"].ping()
    except redisconn.ERRORS as exc:
        log.error("health check: Redis is down: %s", exc)
        return "down"
    return "ok"


def _database_status() -> str:
    try:
        queries.read(current_app.config["ENGINE"], queries.ping)
    except SQLAlchemyError as exc:
        log.error("health check: the database is down: %s", exc)
        return "down"
    return "ok"


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)
