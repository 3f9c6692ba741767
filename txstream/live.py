"""The dashboard's live data (GET /api/live): what the page `/` polls about every second.

Each part is a bounded read, whatever the volume stored:
- the transactions stored after the page's position, in the order they were stored
  (the auto-increment `id`), whatever their event time: a range of the primary key, newest
  first, at most LIVE_LIMIT rows (`stored_after`: how the position skips no row);
- the ingest rate: the subscribers' per-10-second counters of each partition
  (txstream.store's batch script adds each batch's new rows, one INCRBY), the last 15
  minutes read with an MGET per partition (a partition's counters share its hash slot),
  and added up;
- the top users of the current window: read from `user_window_totals`'s covering index
  (window_start, amount_sum, tx_count) alone, one range (a row per user active in the
  window), ranked by the database; cached a few seconds in Redis, so that open tabs share
  one read (docs/BENCHMARKS.md: what the index costs ingest, and why not Redis);
- the counts ever stored, of duplicates and of dead letters (counters the batch script
  keeps, per partition: added up), since when (after Redis lost them), and the live
  subscribers.
Redis or the database down raises, and the app answers 503.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
from sqlalchemy import Connection, Integer, bindparam, func, select

from models import transactions, user_window_totals
from txstream.heartbeats import count_live
from txstream.keys import Keys
from txstream.money import format_amount
from txstream.queries import InvalidCursor, unwrap, wrap
from txstream.rebuild_redis import ALL
from txstream.store import RATE_BUCKET, rate_bucket
from txstream.times import format_time, from_micros, parse_time, to_micros, utcnow
from txstream.transaction import Transaction, to_json
from txstream.wrongtype import WrongType, is_wrong_type, replacing

log = logging.getLogger(__name__)

LIVE_LIMIT = 50  # transactions per answer: the page keeps about as many
RATE_BUCKETS = 90  # 15 minutes of 10-second counters
TOP_USERS = 10
TOP_CACHE_SECONDS = 3
Reader = Callable[[Callable[[Connection], object]], object]  # runs a read, returns its result
_SUM = re.compile(r"-?[0-9]{1,28}\.[0-9]{2}")  # a window's sum: DECIMAL(30, 2)

_t, _w = transactions, user_window_totals
_STORED = (
    select(_t.c.id, _t.c.txn_id, _t.c.user_id, _t.c.amount, _t.c.ts, _t.c.received_at)
    .order_by(_t.c.id.desc())
    .limit(bindparam("limit", type_=Integer))
)
_STORED_AFTER = _STORED.where(_t.c.id > bindparam("after", type_=_t.c.id.type))
# How long the position waits before an id that is missing below a visible row: ids are
# handed out at the INSERT, so another subscriber's batch may still commit it.
GAP_WAIT = timedelta(seconds=5)
_POSITION = re.compile(r"stored:(0|[1-9][0-9]{0,18})")
_MAX_ID = 2**63 - 1  # BIGINT


def encode_position(stored: int) -> str:
    """The opaque `position` of the feed after the transactions stored up to id `stored`."""
    return wrap(f"stored:{stored}")


def decode_position(position: str) -> int:
    """The id in a `position` that `encode_position` made; else raises `InvalidCursor`."""
    match = _POSITION.fullmatch(unwrap(position))
    if match is None or int(match[1]) > _MAX_ID:
        raise InvalidCursor("not a position of the live feed")
    if encode_position(int(match[1])) != position:  # one spelling only, as cursors
        raise InvalidCursor("not in its canonical form")
    return int(match[1])


def stored_after(
    conn: Connection, after: int | None, limit: int = LIVE_LIMIT
) -> tuple[list[Transaction], int]:
    """The newest `limit` transactions stored after the position `after` (the newest when
    None), newest first; and the position to ask from next.

    The position is the newest id, unless an id below it is missing: it then stays before
    the missing one until rows stored GAP_WAIT after the row above it are visible (its
    transaction is that slow, or was rolled back: ids are skipped for good), so that a row
    committed late is not skipped. The rows above it come again: the client skips the ones
    it shows. Ids below the oldest row of a full answer are skipped anyway: there were more
    than `limit` new rows.
    """
    if after is None:
        rows = conn.execute(_STORED, {"limit": limit}).all()
    else:
        rows = conn.execute(_STORED_AFTER, {"limit": limit, "after": after}).all()
    if not rows:
        return [], after or 0
    oldest_first = rows[::-1]
    position = after if after is not None and len(rows) < limit else oldest_first[0].id - 1
    newest = max(row.received_at for row in rows)
    for row in oldest_first:
        if row.id != position + 1 and newest - row.received_at < GAP_WAIT:
            break
        position = row.id
    return [Transaction(row.txn_id, row.user_id, row.amount, row.ts) for row in rows], position


def current_position(conn: Connection) -> str:
    """The position of the feed now: what a page just rendered polls from."""
    return encode_position(stored_after(conn, None)[1])


def rate_series(client: redis.Redis, keys: Keys, now: float) -> list[dict]:
    """Transactions stored per 10 seconds over the last 15 minutes, oldest first; the
    current bucket, still filling, last."""
    last = rate_bucket(now)
    starts = [last - RATE_BUCKET * k for k in range(RATE_BUCKETS - 1, -1, -1)]
    # An MGET per partition: its counters share its hash slot. (The cluster client's
    # pipelines refuse MGET, whatever the keys.)
    by_partition = [
        client.mget([keys.rate(start, partition) for start in starts])
        for partition in range(keys.partitions)
    ]
    return [
        {"at": format_time(from_micros(start * 10**6)), "stored": sum(map(_count, values))}
        for start, *values in zip(starts, *by_partition, strict=True)
    ]


def counts(client: redis.Redis, keys: Keys) -> dict:
    """The transactions ever stored, the duplicates (each partition's, added up) and the
    dead letters; from when the last two count (null: all time), and whether Redis is
    rebuilding its derived state (`stored` lacks rows stored before it lost it meanwhile).

    Duplicates and dead letters are known to Redis only: after Redis lost them they count
    from the time in the markers (txstream.rebuild_redis); a marker not written yet counts
    as now. Raises `WrongType` when a partition's counts are of another type (the
    partition's next batch replaces them); a count of dead letters of another type is
    taken as the list's length, as the subscribers take it (txstream.store)."""
    with client.pipeline(transaction=False) as pipe:
        for partition in range(keys.partitions):
            pipe.hmget(keys.counts(partition), ["stored", "duplicates"])
            pipe.get(keys.derived(partition))
        pipe.get(keys.dead_count)
        pipe.get(keys.dead_since)
        *by_partition, dead_letters, dead_since = pipe.execute(raise_on_error=False)
    hashes, markers = by_partition[::2], by_partition[1::2]
    for partition, reply in enumerate(hashes):
        if is_wrong_type(reply):
            raise WrongType(keys.counts(partition))
    if is_wrong_type(dead_letters):
        log.error("live: %s holds another type; counting the dead letters held", keys.dead_count)
        try:
            dead_letters = client.llen(keys.dead)
        except redis.ResponseError as exc:
            raise WrongType(keys.dead) if is_wrong_type(exc) else exc from None
    markers = [None if is_wrong_type(m) else m for m in markers]
    dead_since = None if is_wrong_type(dead_since) else dead_since
    for reply in (*hashes, *markers, dead_letters, dead_since):
        if isinstance(reply, Exception):
            raise reply
    return {
        "stored": sum(_count(stored) for stored, _ in hashes),
        "duplicates": sum(_count(duplicates) for _, duplicates in hashes),
        "dead_letters": _count(dead_letters),
        "since": {"duplicates": _since(markers), "dead_letters": _since([dead_since])},
        "rebuilding": None in markers,
    }


def _since(markers: list[bytes | None]) -> str | None:
    """The latest time in `markers` (txstream.rebuild_redis; missing or unreadable: now),
    or None when each says `all`."""
    times = []
    for marker in markers:
        if marker == ALL.encode():
            continue
        try:
            times.append(parse_time(marker.decode("ascii")) if marker else utcnow())
        except (ValueError, UnicodeDecodeError):
            times.append(utcnow())
    return format_time(max(times)) if times else None


def top_users(client: redis.Redis, keys: Keys, read: Reader, window_start: datetime) -> dict:
    """The window's users with the largest absolute sums and the most transactions, with
    their exact totals, read by `read` (see `live`); cached TOP_CACHE_SECONDS for every
    worker."""
    window = to_micros(window_start) // 10**6
    try:
        cached = _cached_top(client.get(keys.live_top(window)), window_start)
    except redis.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        replacing(client, keys.live_top(window))  # by the SET below
        cached = None
    if cached is not None:
        return cached
    by_sum, by_count = read(lambda conn: _ranked(conn, window_start))
    top = {
        "window_start": format_time(window_start),
        "by_sum": _shown(by_sum),
        "by_count": _shown(by_count),
    }
    client.set(keys.live_top(window), json.dumps(top), ex=TOP_CACHE_SECONDS)
    return top


def _cached_top(raw: bytes | None, window_start: datetime) -> dict | None:
    """The cached top users if they are what `top_users` writes for this window; else None
    (missing, or forged: read again, and overwritten)."""
    try:
        top = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not (
        isinstance(top, dict)
        and set(top) == {"window_start", "by_sum", "by_count"}
        and top["window_start"] == format_time(window_start)
    ):
        return None
    for rows in (top["by_sum"], top["by_count"]):
        if not (isinstance(rows, list) and len(rows) <= TOP_USERS):
            return None
        for row in rows:
            if not (
                isinstance(row, dict)
                and set(row) == {"user_id", "count", "sum"}
                and type(row["user_id"]) is int
                and type(row["count"]) is int
                and isinstance(row["sum"], str)
                and _SUM.fullmatch(row["sum"])
            ):
                return None
    return top


_WINDOW = select(_w.c.user_id, _w.c.tx_count, _w.c.amount_sum).where(
    _w.c.window_start == bindparam("window_start")
)
# On SQLite (the demo) amounts are text, and ABS() ranks them as floats: the amounts shown
# are the exact ones all the same.
_BY_SUM = _WINDOW.order_by(func.abs(_w.c.amount_sum).desc(), _w.c.user_id).limit(TOP_USERS)
_BY_COUNT = _WINDOW.order_by(_w.c.tx_count.desc(), _w.c.user_id).limit(TOP_USERS)


def _ranked(conn: Connection, window_start: datetime) -> tuple[list, list]:
    """The window's top users by absolute sum and by count: (user_id, count, sum) rows."""
    params = {"window_start": window_start}
    return (
        [tuple(row) for row in conn.execute(_BY_SUM, params)],
        [tuple(row) for row in conn.execute(_BY_COUNT, params)],
    )


def _shown(rows) -> list[dict]:
    return [{"user_id": uid, "count": n, "sum": format_amount(total)} for uid, n, total in rows]


def live(
    client: redis.Redis,
    keys: Keys,
    read: Reader,
    after: int | None,
    window_start: datetime,
) -> dict:
    """Everything the dashboard shows (see txstream.openapi `Live`); `read(work)` runs
    `work(conn)` on the database (txstream.replica.read: a replica's or the primary's)."""
    txns, position = read(lambda conn: stored_after(conn, after))
    now = utcnow()  # the counters are of real time, whatever the app's CLOCK says
    return {
        "items": [to_json(tx) for tx in txns],
        "position": encode_position(position),
        "rate": {"bucket_seconds": RATE_BUCKET, "series": rate_series(client, keys, time.time())},
        "top": top_users(client, keys, read, window_start),
        "counts": counts(client, keys),
        "subscribers": count_live(client, keys, now),
        "health": {"redis": "ok", "database": "ok"},
    }


def _count(value: bytes | None) -> int:
    """A counter read back: 0 when missing or not a whole number (a key can be forged)."""
    try:
        number = int(value or 0)
    except ValueError:
        return 0
    return number if 0 <= number < 2**63 else 0
