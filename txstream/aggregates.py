"""The aggregates' layout, and how a sum over any time range is read from them.

Beside the raw rows the subscriber keeps two levels of per-user totals, in the same
database transaction as the rows: windows of WINDOW_HOURS (`user_window_totals`) and
buckets of `gcd(window, 60 s)` (`user_bucket_totals`: a minute, for any whole-minute
window). A bucket divides the window, so a window is a run of whole buckets, and a range
`start < ts <= end` is read as

    raw rows      start < ts < a       the part of start's bucket after start
    buckets       a <= bucket < wa     whole buckets up to the first window boundary
    windows       wa <= window < wb    whole windows
    buckets       wb <= bucket < b     whole buckets after the last one
    raw rows      b <= ts <= end       the part of end's bucket up to end

with `a <= wa <= wb <= b`. Whatever the user's volume, a sum reads at most range/window
window rows, 2 x window/bucket bucket rows (718 for 6 h windows) and the raw rows of two
buckets (two minutes of the user's transactions).

The sums are right only with the lengths the aggregates were built with, so those are
recorded in the table `settings`: a writer or web app with another WINDOW_HOURS refuses
to start, and the web app reads the lengths from there, not from its own configuration.
`flask --app app rebuild-windows` changes them (txstream.rebuild).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, Table, insert, select

from models import settings
from txstream.times import from_micros, to_micros

log = logging.getLogger(__name__)

BUCKET_LIMIT_SECONDS = 60  # a bucket is the largest divisor of the window up to this
WINDOW_SECONDS = "window_seconds"
BUCKET_SECONDS = "bucket_seconds"


class LayoutMismatch(Exception):
    """The database's aggregates were built with other lengths than this process's."""

    @classmethod
    def between(cls, recorded: Layout, wanted: Layout) -> LayoutMismatch:
        """The error, saying how to agree: which WINDOW_HOURS, or how to rebuild."""
        old, new = (f"{x.window_seconds / 3600:g}" for x in (recorded, wanted))
        return cls(
            f"the database's aggregates are of {recorded.describe()}, not "
            f"{wanted.describe()}: set WINDOW_HOURS={old}, or use another database, or stop "
            f"the subscribers and rebuild the aggregates with `flask --app app "
            f"rebuild-windows --hours {new}`"
        )


class BadLayout(ValueError):
    """The lengths recorded in `settings` are not ones txstream writes."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The lengths, in seconds, of the windows and of the buckets."""

    window_seconds: int
    bucket_seconds: int

    @classmethod
    def for_window(cls, window_seconds: int) -> Layout:
        """The layout for windows of `window_seconds`: buckets of gcd(window, 60 s)."""
        return cls(window_seconds, math.gcd(window_seconds, BUCKET_LIMIT_SECONDS))

    def describe(self) -> str:
        """E.g. `windows of 6 h, buckets of 60 s`."""
        return f"windows of {self.window_seconds / 3600:g} h, buckets of {self.bucket_seconds} s"


def recorded_layout(conn: Connection) -> Layout | None:
    """The layout recorded in the database; None if none is. Raises `BadLayout`."""
    names = (WINDOW_SECONDS, BUCKET_SECONDS)
    s = settings
    rows = dict(conn.execute(select(s.c.name, s.c.value).where(s.c.name.in_(names))).all())
    if not rows:
        return None
    try:
        layout = Layout(int(rows[WINDOW_SECONDS]), int(rows[BUCKET_SECONDS]))
    except (KeyError, ValueError):
        raise BadLayout(f"settings holds {rows!r}, not two whole numbers of seconds") from None
    if layout != Layout.for_window(layout.window_seconds) or layout.window_seconds <= 0:
        raise BadLayout(f"settings holds {layout.describe()}, which txstream does not write")
    return layout


def record_layout(conn: Connection, layout: Layout, table: Table = settings) -> None:
    """Record `layout` (in `table`, made like `settings`); raises IntegrityError when one is
    recorded already."""
    conn.execute(
        insert(table),
        [
            {"name": WINDOW_SECONDS, "value": str(layout.window_seconds)},
            {"name": BUCKET_SECONDS, "value": str(layout.bucket_seconds)},
        ],
    )


class KnownLayout:
    """The database's layout as a web app process knows it: read when first needed.

    Until a writer has recorded one, sums are read from the raw rows (`None`); once
    known, it is kept until a sum finds that the aggregates were rebuilt with another
    (`forget`; txstream.queries.checked_user_sum).
    """

    def __init__(self) -> None:
        self._layout: Layout | None = None

    def get(self, conn: Connection) -> Layout | None:
        """The layout, reading it on `conn` if it is not known yet."""
        if self._layout is None:
            try:
                self._layout = recorded_layout(conn)
            except BadLayout as exc:
                log.error("summing raw rows: the aggregates' layout is unreadable: %s", exc)
        return self._layout

    def forget(self) -> None:
        """Read the layout again when next needed: the aggregates were rebuilt."""
        self._layout = None


class RangeParts(NamedTuple):
    """The boundaries that split `start < ts <= end` into raw rows, buckets and windows
    (see the module's docstring): start < a <= wa <= wb <= b <= end."""

    start: datetime
    a: datetime
    wa: datetime
    wb: datetime
    b: datetime
    end: datetime


def split_range(start: datetime, end: datetime, layout: Layout) -> RangeParts:
    """How to read `start < ts <= end` from the aggregates of `layout`."""
    s, e = to_micros(start), to_micros(end)
    bucket, window = layout.bucket_seconds * 10**6, layout.window_seconds * 10**6
    a = s // bucket * bucket + bucket  # the first bucket boundary after start
    b = e // bucket * bucket  # the last one at or before end
    if a > b:  # start and end in one bucket: raw rows only
        a = b = e
    wa = -(-a // window) * window  # the first window boundary at or after a
    wb = b // window * window  # the last one at or before b
    if wa >= wb:  # no whole window: buckets only
        wa = wb = b
    return RangeParts(start, *(from_micros(x) for x in (a, wa, wb, b)), end)
