"""Time as txstream keeps it: naive UTC datetimes with microseconds, counted from the epoch.

Every conversion between a datetime and epoch microseconds (the exact integer form used by
the wire parser, page cursors and windows) is written here once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
MAX_MICROS = 253402300800 * 10**6  # 10000-01-01, beyond DATETIME's range: exclusive


def to_micros(ts: datetime) -> int:
    """Whole microseconds since the epoch of a naive UTC datetime."""
    return (ts - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    """The naive UTC datetime `micros` microseconds after the epoch."""
    return EPOCH + micros * MICROSECOND


def utcnow() -> datetime:
    """The current time, naive UTC, as txstream stores times."""
    return from_micros(time.time_ns() // 1000)  # a third faster than datetime.now(UTC)


def epoch_seconds(ts: datetime) -> float:
    """Unix epoch seconds of a naive UTC datetime, as the JSON `ts` field carries them."""
    return (ts - EPOCH).total_seconds()


def format_epoch(ts: datetime) -> str:
    """Unix epoch seconds with exactly six decimals, e.g. `1570358269.483609`."""
    seconds, micros = divmod(to_micros(ts), 10**6)
    return f"{seconds}.{micros:06d}"


def format_time(ts: datetime) -> str:
    """ISO-8601 UTC with microseconds, e.g. `2019-10-06T10:37:49.483609Z`.

    Always 27 characters (years 1970-9999), so these strings sort in time order.
    """
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    """The datetime of a `format_time` string; ValueError for any other text."""
    ts = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    if format_time(ts) != text:
        raise ValueError(f"not a time as txstream writes it: {text[:40]!r}")
    return ts


def sql_time(ts: datetime) -> str:
    """`ts` as `YYYY-MM-DD HH:MM:SS.ffffff`: a DATETIME(6) literal, and SQLite's stored form."""
    return ts.isoformat(" ", "microseconds")
