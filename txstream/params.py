"""Request parameters of the API and the pages: parsed and checked here, once for both.

Bad input is rejected with `InvalidParameter`, whose text names the parameter and the
rule; nothing is clamped or rounded silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from txstream import wire
from txstream.live import decode_position
from txstream.queries import InvalidCursor, Position, decode_cursor

T = TypeVar("T")

MAX_HOURS = 8760  # one year
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# A plain decimal: no sign, exponent, nan or inf. Short, so the arithmetic below is exact.
_HOURS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,10})?")
_LIMIT = re.compile(r"[0-9]{1,10}")
POSITION_DIGITS = 16  # a dead letter's position: up to 2^52 (txstream.deadletters)
_POSITION = re.compile(rf"[0-9]{{1,{POSITION_DIGITS}}}")
_MICROS_PER_HOUR = 3_600_000_000
# A date-range bound as HTML's date and datetime-local inputs send it, read as UTC.
_BOUND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?")
EARLIEST = datetime(1970, 1, 1)  # txstream's times are after the epoch
LATEST = datetime(9999, 12, 31, 23, 59, 59)


class InvalidParameter(ValueError):
    """A request parameter txstream cannot use; the text names it and says why."""


def parse_user_id(text: str) -> int:
    """A user id: ASCII digits, 1..2^63-1."""
    try:
        return wire.parse_user_id(text)
    except wire.MalformedMessage as exc:
        raise InvalidParameter(str(exc)) from None


def parse_hours(raw: str | None, default: Decimal) -> Decimal:
    """The `hours` parameter: a plain decimal > 0 and <= 8760, in whole microseconds."""
    if raw is None:
        return default
    hours = Decimal(raw) if _HOURS.fullmatch(raw) else None
    if hours is None or not 0 < hours <= MAX_HOURS or (hours * _MICROS_PER_HOUR) % 1:
        raise InvalidParameter(
            f"hours must be a plain decimal number of hours > 0 and <= {MAX_HOURS} "
            f"(e.g. 6 or 1.5, whole microseconds), got {raw[:40]!r}"
        )
    return hours


def parse_limit(raw: str | None) -> int:
    """The `limit` parameter: a whole number 1..500, 50 when absent."""
    if raw is None:
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidParameter(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw[:40]!r}"
        )
    return int(raw)


def parse_before(raw: str | None) -> Position | None:
    """The `before` parameter: a page cursor from a previous response, or absent."""
    return _decoded(raw, decode_cursor, "before is not a valid page cursor")


def parse_after(raw: str | None) -> int | None:
    """The dashboard's `after`: the `position` of its previous answer, or absent."""
    return _decoded(raw, decode_position, "after is not a valid position")


def _decoded(raw: str | None, decode: Callable[[str], T], complaint: str) -> T | None:
    if raw is None:
        return None
    try:
        return decode(raw)
    except InvalidCursor as exc:
        raise InvalidParameter(f"{complaint}: {exc}") from None


def parse_dead_before(raw: str | None) -> int | None:
    """The dead letters' `before`: a position from a previous page's `next`, or absent."""
    if raw is None:
        return None
    if not _POSITION.fullmatch(raw):
        raise InvalidParameter(
            f"before must be the `next` of a page of dead letters: a whole number of 1 to "
            f"{POSITION_DIGITS} digits, got {raw[:40]!r}"
        )
    return int(raw)


def parse_range(
    raw_from: str | None, raw_to: str | None
) -> tuple[datetime | None, datetime | None]:
    """The `from` and `to` parameters: UTC bounds of `from <= ts < to`; empty or absent
    is no bound. Each is `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`, from
    1970 to 9999; `to` must be later than `from`."""
    since, until = _parse_bound("from", raw_from), _parse_bound("to", raw_to)
    if since is not None and until is not None and until <= since:
        raise InvalidParameter(
            f"to must be later than from (the range is from <= time < to), "
            f"got from {raw_from!r} and to {raw_to!r}"
        )
    return since, until


def _parse_bound(name: str, raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        bound = datetime.fromisoformat(raw) if _BOUND.fullmatch(raw) else None
    except ValueError:
        bound = None
    if bound is None or not EARLIEST <= bound <= LATEST:
        raise InvalidParameter(
            f"{name} must be a UTC date YYYY-MM-DD or date and time YYYY-MM-DDTHH:MM[:SS] "
            f"from {EARLIEST.year} to {LATEST.year}, got {raw[:40]!r}"
        )
    return bound


def span(hours: Decimal) -> timedelta:
    """`hours` as a timedelta, exactly (`parse_hours` admits whole microseconds only)."""
    return timedelta(microseconds=int(hours * _MICROS_PER_HOUR))
