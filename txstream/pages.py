"""The HTML pages: the latest transactions of all users, one user's page, the System page."""

from __future__ import annotations

import logging
from decimal import Decimal

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from txstream import queries, redisconn, replica, system
from txstream.api import read_dead_letters, read_recent, read_user_sum
from txstream.chart import bar_chart
from txstream.money import format_amount, format_money
from txstream.params import (
    InvalidParameter,
    parse_before,
    parse_dead_before,
    parse_hours,
    parse_range,
    parse_user_id,
    span,
)
from txstream.queries import Position, encode_cursor
from txstream.times import format_time

PAGE_SIZE = 50
WINDOWS_SHOWN = 50
# The user page's choice of periods to sum over: hours and their labels.
PERIODS = {Decimal(1): "1 h", Decimal(6): "6 h", Decimal(24): "24 h", Decimal(168): "7 d"}

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)
bp.add_app_template_filter(format_amount, "amount")
bp.add_app_template_filter(format_money, "money")
bp.add_app_template_filter(format_time, "time")


def http_error(exc: HTTPException) -> Response:
    """`exc` as an HTML error page (keeps its status and headers, e.g. Allow)."""
    response = exc.get_response()
    response.set_data(
        render_template("error.html", code=exc.code, name=exc.name, message=exc.description)
    )
    response.content_type = "text/html; charset=utf-8"
    return response


@bp.errorhandler(InvalidParameter)
def invalid_parameter(exc: InvalidParameter):
    """A bad parameter: a 400 page with the reason."""
    page = render_template("error.html", code=400, name="Bad Request", message=str(exc))
    return page, 400


@bp.app_template_global()
def money_class(amount: Decimal) -> str:
    """The CSS classes of a cell showing `amount`: refunds are marked negative."""
    return "num money negative" if amount < 0 else "num money"


@bp.get("/")
def index():
    """The console: the latest transactions of all users, then kept live by dashboard.js
    (which polls /api/live), the ingest rate, the top users, counts and health."""
    before = parse_before(request.args.get("before"))
    txns, cursor = replica.read(
        lambda conn: queries.transactions_page(conn, PAGE_SIZE, before=before)
    )
    position = encode_cursor(Position(txns[0].ts, txns[0].txn_id)) if txns else None
    return render_template(
        "index.html", txns=txns, cursor=cursor, paged=before is not None, position=position
    )


@bp.get("/dead-letters")
def dead_letters():
    """The messages that could not be stored, newest first: why, when, and what came."""
    before = parse_dead_before(request.args.get("before"))
    letters, cursor = read_dead_letters(PAGE_SIZE, before)
    return render_template(
        "dead_letters.html", letters=letters, cursor=cursor, paged=before is not None
    )


@bp.get("/users")
def find_user():
    """The jump-to-user form's target: redirects to the user's page."""
    uid = parse_user_id(request.args.get("user_id", ""))
    return redirect(url_for("pages.user", user_id=uid))


@bp.get("/users/<user_id>")
def user(user_id: str):
    """One user: the sum over a chosen period, the recent 5, the transactions in a date
    range, window totals."""
    uid = parse_user_id(user_id)
    raw_hours = request.args.get("hours")
    hours = parse_hours(raw_hours, current_app.config["WINDOW_HOURS"])
    since, until = parse_range(request.args.get("from"), request.args.get("to"))
    before = parse_before(request.args.get("before"))
    # What the links keep: the accepted parameters as they came, without empty ones.
    kept = {
        name: request.args[name]
        for name in ("hours", "from", "to")
        if request.args.get(name)  # an empty from/to is no bound
    }
    total = read_user_sum(uid, hours)
    try:
        recent = read_recent(uid)
    except redisconn.ERRORS:
        log.exception("user page: Redis is not answering; showing the page without it")
        recent = None  # the rest of the page comes from the database

    def read_all(conn):
        return (
            queries.transactions_page(
                conn, PAGE_SIZE, user_id=uid, before=before, since=since, until=until
            ),
            queries.user_windows(conn, uid, WINDOWS_SHOWN),
        )

    (txns, cursor), windows = replica.read(read_all)
    window_length = span(current_app.config["WINDOW_HOURS"])
    periods = dict(PERIODS)
    periods.setdefault(hours, f"{hours} h")

    def link(**changes) -> str:
        params = {name: value for name, value in {**kept, **changes}.items() if value}
        return url_for("pages.user", user_id=uid, **params)

    return render_template(
        "user.html",
        user_id=uid,
        hours=hours,
        period=periods[hours],
        period_links=[(h, label, link(hours=str(h))) for h, label in sorted(periods.items())],
        total=total,
        since=since,
        until=until,
        kept=kept,
        recent=recent,
        txns=txns,
        paged=before is not None,
        newest_url=link(),
        older_url=cursor and link(before=cursor),
        all_times_url=link(**{"from": None, "to": None}),
        windows=windows,
        window_hours=current_app.config["WINDOW_HOURS"],
        window_length=window_length,
        chart=bar_chart(windows, window_length),
    )


@bp.get("/system")
def system_page():
    """The operator's view: subscribers, stream, dead letters, layout, servers' health."""
    return render_template("system.html", status=system.app_status())
