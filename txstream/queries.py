"""The read side: the web app's queries, plain functions of a SQLAlchemy connection.

Lists are paged by keyset, never by OFFSET: a page ends at a position (ts, txn_id), and
the next page starts strictly after it in the order `ts DESC, txn_id DESC`. The client
carries the position as an opaque cursor string.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.exc import DBAPIError

from models import settings, transactions, user_bucket_totals, user_window_totals
from txstream.aggregates import WINDOW_SECONDS, KnownLayout, Layout, split_range
from txstream.dialect import money_sum
from txstream.money import MONEY_CONTEXT
from txstream.times import MAX_MICROS, from_micros, to_micros
from txstream.transaction import Transaction
from txstream.wire import MalformedMessage, parse_txn_id

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CURSOR_CHARS = 200
# The cursor's text: "<epoch microseconds>:<txn_id>".
_POSITION = re.compile(r"([0-9]{1,18}):(.*)", re.DOTALL)


class StaleLayout(Exception):
    """The aggregates were rebuilt with another layout than the one a sum was split by."""


class InvalidCursor(ValueError):
    """A page cursor that this app did not make; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the newest-first order: the (ts, txn_id) of the last row of a page."""

    ts: datetime
    txn_id: str


@dataclass(frozen=True, slots=True)
class WindowRow:
    """A user's totals over one window, as stored in `user_window_totals`."""

    user_id: int
    window_start: datetime
    tx_count: int
    amount_sum: Decimal
    amount_min: Decimal
    amount_max: Decimal
    updated_at: datetime


# Each statement is built once, with bound parameters: building and hashing a new
# statement on every request cost more than MariaDB's work (docs/BENCHMARKS.md).
_t, _w, _b, _s = transactions, user_window_totals, user_bucket_totals, settings
_USER_ID = bindparam("user_id")
_RAW_SUM = select(func.count(), money_sum(_t.c.amount)).where(
    _t.c.user_id == _USER_ID, _t.c.ts > bindparam("start"), _t.c.ts <= bindparam("end")
)
# One statement, so one consistent snapshot of the rows and aggregates (each batch writes
# them in one transaction). Its parts: see txstream.aggregates. The first column says which
# part a row is of: the last part counts 1 if the window length the range was split by is
# still the one recorded (a rebuild swaps the aggregates and `settings` at once).
_PART, _LAYOUT_PART = literal_column("0"), 1
_AGGREGATE_SUM = union_all(
    select(_PART, func.count(), money_sum(_t.c.amount)).where(
        _t.c.user_id == _USER_ID,
        or_(
            and_(_t.c.ts > bindparam("start"), _t.c.ts < bindparam("a")),
            and_(_t.c.ts >= bindparam("b"), _t.c.ts <= bindparam("end")),
        ),
    ),
    select(_PART, func.sum(_b.c.tx_count), money_sum(_b.c.amount_sum)).where(
        _b.c.user_id == _USER_ID,
        or_(
            and_(_b.c.bucket_start >= bindparam("a"), _b.c.bucket_start < bindparam("wa")),
            and_(_b.c.bucket_start >= bindparam("wb"), _b.c.bucket_start < bindparam("b")),
        ),
    ),
    select(_PART, func.sum(_w.c.tx_count), money_sum(_w.c.amount_sum)).where(
        _w.c.user_id == _USER_ID,
        _w.c.window_start >= bindparam("wa"),
        _w.c.window_start < bindparam("wb"),
    ),
    select(literal_column(str(_LAYOUT_PART)), func.count(), null()).where(
        _s.c.name == WINDOW_SECONDS, _s.c.value == bindparam("window_seconds")
    ),
)


# Most users have a few transactions in a range: their raw rows, one short index range, cost
# less than the three tables of the aggregates (docs/BENCHMARKS.md).
FEW_ROWS = 100
_LAYOUT_READS = 3  # a rebuild between the layout's read and the sum: read it again
_FIRST_ROWS = (
    _RAW_SUM.with_only_columns(_t.c.amount).limit(bindparam("probe", type_=Integer)).subquery()
)
_FEW_ROWS_SUM = select(func.count(), money_sum(_FIRST_ROWS.c.amount))


def user_sum(
    conn: Connection,
    user_id: int,
    start: datetime,
    end: datetime,
    layout: Layout | None,
    few_rows: int = FEW_ROWS,
) -> tuple[int, Decimal]:
    """Count and exact sum of the user's transactions with `start < ts <= end`.

    Summed from the raw rows when there are at most `few_rows` of them (found by reading
    at most one more); else read from the aggregates of `layout`, at a cost bounded whatever
    the user's volume. From all the raw rows when `layout` is None (no aggregates yet).
    Raises `StaleLayout` when the aggregates are of another layout by now.
    """
    params = {"user_id": user_id, "start": start, "end": end}
    if layout is None:
        return _added(conn.execute(_RAW_SUM, params).all())
    if few_rows > 0:
        count, total = _added(conn.execute(_FEW_ROWS_SUM, {**params, "probe": few_rows + 1}))
        if count <= few_rows:
            return count, total
    params = {
        "user_id": user_id,
        "window_seconds": str(layout.window_seconds),
        **split_range(start, end, layout)._asdict(),
    }
    rows = conn.execute(_AGGREGATE_SUM, params).all()
    if sum(count for part, count, _ in rows if part == _LAYOUT_PART) != 1:
        raise StaleLayout(f"the aggregates are not of {layout.describe()} any more")
    return _added((count, total) for part, count, total in rows if part != _LAYOUT_PART)


def checked_user_sum(
    conn: Connection, user_id: int, start: datetime, end: datetime, known: KnownLayout
) -> tuple[int, Decimal]:
    """`user_sum` with the layout that `known` holds; when the aggregates were rebuilt
    since, with the layout read anew."""
    for _ in range(_LAYOUT_READS - 1):
        try:
            return user_sum(conn, user_id, start, end, known.get(conn))
        except StaleLayout as exc:
            log.warning("reading the aggregates' layout again: %s", exc)
            known.forget()
    return user_sum(conn, user_id, start, end, known.get(conn))


def _added(rows) -> tuple[int, Decimal]:
    """The total (count, sum) of rows of (count, sum) that may be NULL."""
    count, total = 0, Decimal("0.00")
    for part_count, part_total in rows:
        if part_count:
            count += int(part_count)
            total = MONEY_CONTEXT.add(total, part_total)
    return count, total


def transactions_page(
    conn: Connection,
    limit: int,
    user_id: int | None = None,
    before: Position | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[Transaction], str | None]:
    """Up to `limit` transactions, newest first, after `before`; and the next page's cursor.

    `user_id` None means all users. `since` and `until`, when given, keep the transactions
    with `since <= ts < until`. The cursor is None on the last page.
    """
    statement = _page_statement(
        user_id is not None, before is not None, since is not None, until is not None
    )
    # One more than `limit`: is there a next page?
    params = _page_params(limit + 1, user_id, before, since=since, until=until)
    rows = [Transaction(*row) for row in conn.execute(statement, params)]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(Position(last.ts, last.txn_id))


@functools.cache
def _page_statement(
    of_one_user: bool, after_a_position: bool, since: bool = False, until: bool = False
) -> Select:
    t = transactions
    query = select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts)
    if of_one_user:
        query = query.where(t.c.user_id == bindparam("user_id"))
    if since:
        query = query.where(t.c.ts >= bindparam("since"))
    if until:
        query = query.where(t.c.ts < bindparam("until"))
    if after_a_position:
        ts, txn_id = bindparam("before_ts"), bindparam("before_txn_id")
        query = query.where(
            # `ts <= :ts` repeats what the OR implies, so MySQL can scan an index range.
            t.c.ts <= ts,
            or_(t.c.ts < ts, and_(t.c.ts == ts, t.c.txn_id < txn_id)),
        )
    return query.order_by(t.c.ts.desc(), t.c.txn_id.desc()).limit(bindparam("limit", type_=Integer))


def _page_params(
    limit: int,
    user_id: int | None,
    before: Position | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict:
    params: dict = {"limit": limit}
    for name, value in (("user_id", user_id), ("since", since), ("until", until)):
        if value is not None:
            params[name] = value
    if before is not None:
        params["before_ts"], params["before_txn_id"] = before.ts, before.txn_id
    return params


_USER_WINDOWS = (
    select(
        _w.c.user_id,
        _w.c.window_start,
        _w.c.tx_count,
        _w.c.amount_sum,
        _w.c.amount_min,
        _w.c.amount_max,
        _w.c.updated_at,
    )
    .where(_w.c.user_id == bindparam("user_id"))
    .order_by(_w.c.window_start.desc())
    .limit(bindparam("limit", type_=Integer))
)


def user_windows(conn: Connection, user_id: int, limit: int) -> list[WindowRow]:
    """The user's latest `limit` window totals, newest window first."""
    rows = conn.execute(_USER_WINDOWS, {"user_id": user_id, "limit": limit})
    return [WindowRow(*row) for row in rows]


def read(engine: Engine, work: Callable[[Connection], T]) -> T:
    """`work(conn)` on a pooled connection; once more on a new one if that one was dead.

    The web app's engine does not ping each connection before use (a round trip per
    request). After a database restart the first use of an old connection fails, and
    SQLAlchemy then discards the whole pool; reads are safe to repeat.
    """
    try:
        with engine.connect() as conn:
            return work(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("database connection lost (%s); reading again on a new one", exc.orig)
    with engine.connect() as conn:
        return work(conn)


def ping(conn: Connection) -> None:
    """Run the cheapest query there is; raises if the database does not answer."""
    conn.execute(select(1)).one()


def wrap(text: str) -> str:
    """`text` (ASCII) as an opaque, URL-safe string: a cursor or a live position."""
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


def unwrap(cursor: str) -> str:
    """The text that `wrap` made `cursor` of; raises `InvalidCursor` for anything else."""
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
        raise InvalidCursor("not a cursor this app made")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("not valid URL-safe base64 of ASCII text") from None
    return text


def encode_cursor(position: Position) -> str:
    """The opaque, URL-safe cursor of `position`."""
    return wrap(f"{to_micros(position.ts)}:{position.txn_id}")


def decode_cursor(cursor: str) -> Position:
    """The position in `cursor`; raises `InvalidCursor` unless `encode_cursor` made it."""
    text = unwrap(cursor)
    match = _POSITION.fullmatch(text)
    if match is None:
        raise InvalidCursor("not of the form <microseconds>:<txn_id>")
    micros = int(match[1])
    if not 0 < micros < MAX_MICROS:
        raise InvalidCursor("its time is out of range")
    try:
        txn_id = parse_txn_id(match[2])
    except MalformedMessage as exc:
        raise InvalidCursor(str(exc)) from None
    position = Position(from_micros(micros), txn_id)
    # urlsafe_b64decode also takes '+', '/', '=' and stray bits: accept one spelling only.
    if encode_cursor(position) != cursor:
        raise InvalidCursor("not in its canonical form")
    return position
