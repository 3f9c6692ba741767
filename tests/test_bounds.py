"""Every value txstream accepts renders: no accepted time overflows a window end, a page
cursor or a format, whatever MAX_CLOCK_SKEW and WINDOW_HOURS allow.

A message stamped near year 9999 was once accepted, and its window end then overflowed:
that user's windows and page answered 500 for good. Times are now accepted from 2000-01-01
to now + MAX_CLOCK_SKEW (txstream.wire), which leaves room for the longest window.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

import config
from tests.helpers import BIGGEST, line, seed
from txstream.params import MAX_HOURS
from txstream.queries import Position, decode_cursor, encode_cursor
from txstream.times import format_epoch, format_time, from_micros, parse_time, to_micros, utcnow
from txstream.transaction import TXN_ID, Transaction, from_json_text, to_json_text
from txstream.windows import window_start
from txstream.wire import EARLIEST, format_line, latest_accepted, parse

LATEST_EVER = latest_accepted(config.MAX_CLOCK_SKEW_LIMIT)  # the largest MAX_CLOCK_SKEW
LONGEST_WINDOW = MAX_HOURS * 3600  # WINDOW_HOURS at most, in seconds


@given(
    ts=st.integers(to_micros(EARLIEST), LATEST_EVER).map(from_micros),
    window_seconds=st.integers(1, LONGEST_WINDOW),
    txn_id=st.from_regex(TXN_ID, fullmatch=True),
)
@example(ts=EARLIEST, window_seconds=LONGEST_WINDOW, txn_id="a")
@example(ts=from_micros(LATEST_EVER), window_seconds=LONGEST_WINDOW, txn_id="z" * 64)
def test_no_accepted_time_overflows_a_window_a_cursor_or_a_format(ts, window_seconds, txn_id):
    start = window_start(ts, window_seconds)
    end = start + timedelta(seconds=window_seconds)  # the window end the API and pages show
    assert start <= ts < end
    assert parse_time(format_time(start)) == start and parse_time(format_time(end)) == end
    position = Position(ts, txn_id)
    assert decode_cursor(encode_cursor(position)) == position
    tx = Transaction(txn_id, 1, Decimal(BIGGEST), ts)
    assert from_json_text(to_json_text(tx)) == tx
    assert parse(format_line(tx), latest=LATEST_EVER) == tx
    assert format_epoch(ts) == format_line(tx).split(",")[2]


def test_the_app_renders_the_earliest_and_latest_accepted_times(app, client):
    """In the longest windows: every endpoint and page that shows a stored time."""
    app.config["WINDOW_HOURS"] = Decimal(MAX_HOURS)
    latest = utcnow() + timedelta(seconds=config.DEFAULT_MAX_CLOCK_SKEW - 60)
    seed(app, line(1, BIGGEST, EARLIEST, "earliest"), line(1, BIGGEST, latest, "latest"))
    windows = client.get("/api/users/1/windows").get_json()["items"]
    assert [w["window_start"] for w in windows] == [
        format_time(window_start(ts, MAX_HOURS * 3600)) for ts in (latest, EARLIEST)
    ]
    assert all(parse_time(w["window_end"]) > parse_time(w["window_start"]) for w in windows)
    page = client.get("/api/users/1/transactions?limit=1").get_json()
    assert [item["txn_id"] for item in page["items"]] == ["latest"]
    older = client.get(f"/api/users/1/transactions?limit=1&before={page['next']}").get_json()
    assert [item["txn_id"] for item in older["items"]] == ["earliest"]
    recent = client.get("/api/users/1/recent").get_json()["items"]
    assert [item["txn_id"] for item in recent] == ["latest", "earliest"]
    for path in ("/users/1", "/"):
        assert client.get(path).status_code == 200
    assert format_time(latest) in client.get("/users/1").get_data(as_text=True)
