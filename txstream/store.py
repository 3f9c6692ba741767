"""Stores a batch: its rows and window totals in the database, then one Redis transaction.

This is the one place that writes a batch, for the subscriber and for the tests alike:
`commit` (the database stage), then `write_redis` (the Redis stage); `store` does both.

The database: one transaction per batch keeps the raw rows and the aggregates
(`user_window_totals`, `user_bucket_totals`: txstream.aggregates) equal. On every backend
the same steps: insert the batch, skipping the txn_ids stored before; when that did not
insert every row cleanly, undo it, look up what is stored and insert only the rest; then
add the rows inserted now to their windows and buckets. A txn_id that
comes again unchanged is a duplicate; with another user, amount or time, a dead letter:
the first one stored wins. The SQL that differs between MySQL and SQLite is in
txstream.dialect.

Redis, after the commit, so that it never shows what the database lacks: the dead letters
first, then per partition one script call that merges the batch into the recent lists
(txstream.recent), counts it and acknowledges its stream entries, atomically, and then
trims the stream of what every consumer group has acknowledged (txstream.transport). (One
server with one partition: a single call, as a batch rarely has dead letters.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import redis
from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import DataError, IntegrityError

import config
from models import transactions, user_bucket_totals, user_window_totals
from txstream.aggregates import Layout, LayoutMismatch, record_layout, recorded_layout
from txstream.dialect import PLAIN_INSERT, StoreStatements, statements
from txstream.keys import Keys
from txstream.recent import MERGE_RECENT_LUA, merge_arguments
from txstream.times import format_time, sql_time, utcnow
from txstream.transaction import Transaction, checked_txn_id
from txstream.transport import TRIM_ACKNOWLEDGED_LUA
from txstream.windows import totals
from txstream.wire import format_line
from txstream.wrongtype import REPLACE_LUA, log_replaced

log = logging.getLogger(__name__)

# A concurrent subscriber may insert the same txn_id between our look-up and our insert;
# the batch is then rolled back and stored again.
_CONFLICT_RETRIES = 5
CONFLICT = "conflicts with the stored transaction"
# How old a prepared batch may be at its commit: its rows' received_at is when it was made.
_PREPARED_FOR = 1.0  # seconds
_REBUILD_CHUNK = 20_000  # stored rows read at a time when building the aggregates
_UNPACK = 1000  # arguments per Lua unpack(): its stack holds a few thousand at most
# A dead letter stays small whatever was sent (escaped, a 5 MB message made a 30 MB one,
# and an argument over Redis's bulk limit would fail the batch script on every try): its
# JSON, as written to Redis, is at most DEAD_LETTER_BYTES, its reason's at most
# DEAD_REASON_BYTES, and it keeps as much of the message's first DEAD_RAW_BYTES as fits
# (escaping takes up to 6 characters a byte). Its size and SHA-256 identify the whole.
DEAD_LETTER_BYTES = 6 * 1024
DEAD_REASON_BYTES = 1024
DEAD_RAW_BYTES = 4096
CUT = "\u2026"  # ends a reason that was cut
# The ingest rate: stored rows counted per RATE_BUCKET seconds of commit time, each counter
# kept RATE_KEEP seconds, a little more than the 15 minutes the dashboard shows.
RATE_BUCKET = 10
RATE_KEEP = 16 * 60

# A partition's part of a batch, in one script call: every key is in the partition's hash
# slot (txstream.keys). KEYS: the stream, the ingest-rate counter of now, the counts, then
# the recent lists. ARGV: the consumer group ('' for none), how many entry ids, the new
# rows, the duplicates, the rate counter's lifetime (seconds); the ids; then for each
# recent list its number of new items and the items. The entries are acknowledged last,
# in the same atomic call as what they wrote; then the stream is trimmed of what every
# group has acknowledged (the emitter never trims it). A counter or list of another type
# is replaced (txstream.wrongtype): it is derived, and must not hold the batch up. Returns
# how many unreadable recent items were dropped, and the keys replaced.
_WRITE_BATCH = (
    MERGE_RECENT_LUA
    + TRIM_ACKNOWLEDGED_LUA
    + f"""
local n_ids, n_new = tonumber(ARGV[2]), tonumber(ARGV[3])
local n_dup, rate_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = 6  -- where the entry ids begin in ARGV
local pos, dropped = ids + n_ids, 0
if n_new > 0 then
  mending(KEYS[2], 'INCRBY', KEYS[2], n_new)
  redis.call('EXPIRE', KEYS[2], rate_ttl)
  mending(KEYS[3], 'HINCRBY', KEYS[3], 'stored', n_new)
end
if n_dup > 0 then
  mending(KEYS[3], 'HINCRBY', KEYS[3], 'duplicates', n_dup)
end
for k = 4, #KEYS do
  local n = tonumber(ARGV[pos])
  dropped, pos = dropped + merge_recent(KEYS[k], pos + 1, pos + n), pos + n + 1
end
local last = ids + n_ids - 1
for i = ids, last, {_UNPACK} do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + {_UNPACK - 1}, last)))
end
if n_ids > 0 then trim_acknowledged(KEYS[1]) end
return {{dropped, replaced}}
"""
)

# Lua: how many dead letters were ever appended to the list KEYS[1] (of length `held`), as
# KEYS[2] keeps it; missing or unreadable (not a whole number from `held` to 2^52): `held`.
# And the type of KEYS[2].
DEAD_COUNT_LUA = """
local function dead_count(held)
  local count, kind = nil, redis.call('TYPE', KEYS[2])['ok']
  if kind == 'string' then
    count = tonumber(redis.call('GET', KEYS[2]))
  end
  if not count or count ~= math.floor(count) or count < held or count > 2^52 then
    return held, kind
  end
  return count, kind
end
"""

# Appends dead letters, before the batch's entries are acknowledged (a crash between the
# two delivers the entries again: their letters are then appended twice, never lost).
# KEYS: the dead letters, their count (both in one slot). ARGV: the list's cap, the
# letters. The count is of every dead letter ever appended (txstream.deadletters pages by
# it); missing or unreadable, it starts again from the list's length. Either key of another
# type is replaced (txstream.wrongtype); returns the keys replaced.
_WRITE_DEAD = (
    REPLACE_LUA
    + DEAD_COUNT_LUA
    + f"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'list' then
  note(KEYS[1], kind)
  redis.call('DEL', KEYS[1])
end
local count, count_kind = dead_count(redis.call('LLEN', KEYS[1]))
if count_kind ~= 'none' and count_kind ~= 'string' then
  note(KEYS[2], count_kind)  -- and SET below replaces it
end
for i = 2, #ARGV, {_UNPACK} do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {_UNPACK - 1}, #ARGV)))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)  -- the newest ARGV[1]
redis.call('SET', KEYS[2], string.format('%d', count + #ARGV - 1))
return replaced
"""
)


@dataclass
class Committed:
    """What a committed batch changed."""

    new: list[Transaction] = field(default_factory=list)  # inserted now
    # Stored by an earlier batch: a redelivery, maybe after a crash between commit and
    # the Redis write, so they go to the recent lists again (the merge skips repeats).
    stored_before: list[Transaction] = field(default_factory=list)
    duplicates: int = 0  # exact repeats of what was stored before or earlier in the batch
    # Dead letters: rows the database refused, and transactions whose txn_id came first
    # (stored before, or earlier in the batch) with another user, amount or time.
    rejected: list[dict] = field(default_factory=list)
    # Those conflicts: each one's txn_id and the fields that differ from the first's.
    conflicts: list[tuple[str, list[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """A batch's statements, made before its turn in the database stage (by the thread that
    reads the next batch meanwhile): they store it when none of its txn_ids is stored yet,
    the usual case. Otherwise the commit works out the rest itself."""

    sorted_out: Committed  # what storing the batch does if nothing of it is stored yet
    insert: str  # INSERT, skipping stored txn_ids, of sorted_out.new
    add_to_windows: str
    add_to_buckets: str
    made_at: float  # time.monotonic()


def dead_letter(
    raw: bytes | str,
    reason: str,
    at: datetime | None = None,
    whole: tuple[int, str] | None = None,
) -> dict:
    """The dead-letter record of a message: as much of its start as fits (`raw`, non-UTF-8
    bytes kept escaped; `kept`: how many bytes), the whole message's size in bytes and
    SHA-256 (`whole`, when `raw` is only its start), why (cut to fit, ending in CUT), and
    when. Its JSON (`json.dumps`) is at most DEAD_LETTER_BYTES long, whatever came."""
    data = raw.encode() if isinstance(raw, str) else raw
    size, sha256 = whole or (len(data), hashlib.sha256(data).hexdigest())
    if len(json.dumps(reason)) > DEAD_REASON_BYTES:
        n = _longest(len(reason), lambda n: len(json.dumps(reason[:n] + CUT)) <= DEAD_REASON_BYTES)
        reason = reason[:n] + CUT
    letter = {
        "raw": "",
        "kept": DEAD_RAW_BYTES,  # its widest, while the room for `raw` is measured
        "size": size,
        "sha256": sha256,
        "reason": reason,
        "at": format_time(at or utcnow()),
    }
    room = DEAD_LETTER_BYTES - len(json.dumps(letter))
    head = data[:DEAD_RAW_BYTES]
    kept = _longest(len(head), lambda n: len(json.dumps(_escaped(head[:n]))) <= room)
    letter.update(raw=_escaped(head[:kept]), kept=kept)
    return letter


def _escaped(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _longest(most: int, fits: Callable[[int], bool]) -> int:
    """The largest n <= `most` found to fit (a bisection: `fits(0)` is taken as true)."""
    if fits(most):
        return most
    low, high = 0, most  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


class Store:
    """Stores batches of transactions in the database and in Redis."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        keys: Keys,
        window_seconds: int,
        group: str | None = None,
        dead_letters_max: int = config.DEFAULT_DEAD_LETTERS_MAX,
    ) -> None:
        self.engine = engine
        self.client = client
        self.keys = keys
        self.layout = Layout.for_window(window_seconds)
        self._layout_ensured = False
        self.group = group  # the stream's consumer group, whose entries are acknowledged
        self.dead_letters_max = dead_letters_max  # the dead-letter list keeps the newest
        self._write_batch = client.register_script(_WRITE_BATCH)
        self._write_dead = client.register_script(_WRITE_DEAD)

    def store(
        self,
        txns: Sequence[Transaction],
        dead: Sequence[dict] = (),
        entry_ids: Mapping[int, Sequence[str]] | None = None,
    ) -> Committed:
        """Commit `txns`, then write Redis: what the subscriber does with each batch
        (`entry_ids`: the stream entries to acknowledge, by partition)."""
        committed = self.commit(txns)
        self.write_redis(committed, dead, entry_ids)
        return committed

    def ensure_layout(self) -> None:
        """Check (or record) the database's layout of aggregates (the function `ensure_layout`)."""
        ensure_layout(self.engine, self.layout)
        self._layout_ensured = True

    def prepare(self, txns: Sequence[Transaction]) -> Prepared:
        """The statements that commit `txns` when none of their txn_ids is stored yet."""
        sql, now = statements(self.engine.dialect), utcnow()
        sorted_out = _sort_out(txns, {})
        new = sorted_out.new
        windows, buckets = totals(new, self.layout.window_seconds, self.layout.bucket_seconds)
        return Prepared(
            sorted_out,
            sql.insert_ignore.format(rows=_rows(new, now)),
            sql.add_to_windows.format(rows=_window_rows(windows, now)),
            sql.add_to_buckets.format(rows=_bucket_rows(buckets)),
            time.monotonic(),
        )

    def commit(self, txns: Sequence[Transaction], prepared: Prepared | None = None) -> Committed:
        """Insert the new transactions and add them to their windows and buckets, in one
        database transaction; with `prepared`, the statements `prepare(txns)` made.

        Connection errors propagate, with nothing committed, for the caller to retry.
        Raises `LayoutMismatch` when the database's aggregates are of another layout.
        """
        if not self._layout_ensured:
            self.ensure_layout()
        try:
            committed = self._commit_with_retry(txns, prepared)
        except DataError:
            # Not expected after parsing; but one bad row must not cost the others.
            log.exception("the database rejected a batch; storing it row by row")
            committed = self._commit_one_by_one(txns)
        for txn_id, fields in committed.conflicts:  # logged once committed: never twice
            log.warning(
                "txn_id %s came again with another %s than the transaction stored first: "
                "kept as a dead letter",
                txn_id,
                _listed(fields),
            )
        return committed

    def write_redis(
        self,
        committed: Committed,
        dead: Sequence[dict],
        entry_ids: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        """The dead letters (`dead` and those of the commit), then for each partition in
        one script call: its recent lists, counters and the acknowledgements of its
        `entry_ids` (by partition)."""
        if letters := [json.dumps(d) for d in [*dead, *committed.rejected]]:
            replaced = self._write_dead(
                keys=[self.keys.dead, self.keys.dead_count],
                args=[self.dead_letters_max, *letters],
            )
            log_replaced(replaced)
        shown = committed.new + committed.stored_before
        parts = _by_partition(self.keys, committed.new, shown, entry_ids if self.group else {})
        bucket = rate_bucket(time.time())
        duplicates = committed.duplicates  # counted with the first partition written
        dropped = 0
        for p, (new, txns, ids) in sorted(parts.items()):
            recent_keys, recent_args = merge_arguments(self.keys, txns)
            keys = [self.keys.stream_of(p), self.keys.rate(bucket, p), self.keys.counts(p)]
            args = [self.group or "", len(ids), new, duplicates, RATE_KEEP, *ids]
            d, replaced = self._write_batch(keys=keys + recent_keys, args=args + recent_args)
            log_replaced(replaced)
            dropped, duplicates = dropped + d, 0
        if dropped:
            log.error("recent lists: dropped %d unreadable items", dropped)

    def _commit_with_retry(
        self, txns: Sequence[Transaction], prepared: Prepared | None = None
    ) -> Committed:
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return self._insert_new(conn, txns, prepared)
            except IntegrityError:
                if attempt == _CONFLICT_RETRIES:
                    raise
                log.info("txn_id conflict with another writer; retrying the batch")
        raise AssertionError("unreachable")

    def _commit_one_by_one(self, txns: Sequence[Transaction]) -> Committed:
        committed = Committed()
        for tx in txns:
            try:
                one = self._commit_with_retry([tx])
            except DataError as exc:
                reason = f"rejected by the database: {exc.orig}"
                committed.rejected.append(dead_letter(format_line(tx), reason))
                continue
            committed.new += one.new
            committed.stored_before += one.stored_before
            committed.duplicates += one.duplicates
            committed.rejected += one.rejected
            committed.conflicts += one.conflicts
        return committed

    def _insert_new(
        self, conn: Connection, txns: Sequence[Transaction], prepared: Prepared | None
    ) -> Committed:
        """The storing steps, the same on every database.

        Usually one INSERT that skips stored txn_ids, kept when it inserted every row
        without a warning: nothing was stored before, and no value was clipped. Else (a
        redelivery, a txn_id stored before, a bad value) it is undone, the batch is sorted
        out against the stored rows, and only the new rows are inserted, by a plain INSERT
        that raises on a bad value.
        """
        if not txns:
            return Committed()
        if prepared is None or time.monotonic() - prepared.made_at > _PREPARED_FOR:
            prepared = self.prepare(txns)
        sql, committed = statements(conn.dialect), prepared.sorted_out
        attempt = conn.begin_nested()  # a savepoint
        inserted = conn.exec_driver_sql(prepared.insert).rowcount
        if inserted == len(committed.new) and (
            sql.warning_count is None or conn.exec_driver_sql(sql.warning_count).scalar() == 0
        ):
            attempt.commit()
            conn.exec_driver_sql(prepared.add_to_windows)
            conn.exec_driver_sql(prepared.add_to_buckets)
            return committed
        attempt.rollback()
        committed = _sort_out(txns, _stored(conn, committed.new))
        if committed.new:
            now = utcnow()
            conn.exec_driver_sql(PLAIN_INSERT.format(rows=_rows(committed.new, now)))
            add_to_aggregates(conn, sql, committed.new, self.layout, now)
        return committed


def _by_partition(
    keys: Keys,
    new: list[Transaction],
    shown: list[Transaction],
    entry_ids: Mapping[int, Sequence[str]] | None,
) -> dict[int, tuple[int, list[Transaction], list[str]]]:
    """A batch's Redis writes by partition: how many new rows, the transactions for the
    recent lists, the entry ids to acknowledge. A transaction goes to its user's
    partition, an entry id to its stream's (the same one, unless the emitter was another
    txstream's): each script call touches the keys of one slot. A batch with nothing to
    write still counts its duplicates in partition 0."""
    txns_of: dict[int, list[Transaction]] = defaultdict(list)
    for tx in shown:
        txns_of[keys.partition_of(tx.user_id)].append(tx)
    ids_of = {p: list(ids) for p, ids in (entry_ids or {}).items() if ids}
    new_of = Counter(keys.partition_of(tx.user_id) for tx in new)
    partitions = set(txns_of) | set(ids_of) or {0}
    return {p: (new_of[p], txns_of.get(p, []), ids_of.get(p, [])) for p in partitions}


def rate_bucket(epoch: float) -> int:
    """The epoch second that starts the RATE_BUCKET-second bucket of `epoch`."""
    return int(epoch) // RATE_BUCKET * RATE_BUCKET


def add_to_aggregates(
    conn: Connection, sql: StoreStatements, txns: list[Transaction], layout: Layout, now: datetime
) -> None:
    """Add `txns` to their windows and buckets."""
    windows, buckets = totals(txns, layout.window_seconds, layout.bucket_seconds)
    conn.exec_driver_sql(sql.add_to_windows.format(rows=_window_rows(windows, now)))
    conn.exec_driver_sql(sql.add_to_buckets.format(rows=_bucket_rows(buckets)))


def ensure_layout(engine: Engine, layout: Layout) -> None:
    """Make sure that the database's aggregates are of `layout`.

    A database with no layout recorded gets `layout`, and its aggregates are built anew
    from the stored rows: it is new, or of a txstream that kept no buckets. Raises
    `LayoutMismatch` when another layout is recorded.
    """
    with engine.connect() as conn:
        recorded = recorded_layout(conn)
    if recorded is None:
        try:
            with engine.begin() as conn:
                record_layout(conn, layout)  # waits while another writer records one
                _rebuild_aggregates(engine, conn, layout)
        except IntegrityError:
            pass  # another writer recorded one first: compared below
        with engine.connect() as conn:
            recorded = recorded_layout(conn)
    if recorded != layout:
        raise LayoutMismatch.between(recorded, layout)


def _rebuild_aggregates(engine: Engine, conn: Connection, layout: Layout) -> None:
    """Build the windows and buckets of every stored row, in `conn`'s transaction."""
    t = transactions
    if conn.execute(select(t.c.id).limit(1)).first() is None:
        return  # a new database
    log.warning(
        "building the window and bucket totals (%s) of the stored transactions", layout.describe()
    )
    conn.execute(delete(user_window_totals))
    conn.execute(delete(user_bucket_totals))
    sql, now, done = statements(conn.dialect), utcnow(), 0
    for txns in stored_in_chunks(engine):
        add_to_aggregates(conn, sql, txns, layout, now)
        done += len(txns)
        if done % (50 * _REBUILD_CHUNK) < _REBUILD_CHUNK:
            log.info("built the totals of %d stored transactions so far", done)
    log.warning("built the window and bucket totals of %d stored transactions", done)


def stored_in_chunks(engine: Engine) -> Iterator[list[Transaction]]:
    """Every stored transaction, by user and time, a chunk at a time.

    One statement on a connection of its own, streamed (a server-side cursor on MySQL):
    one consistent snapshot of the rows, read without locks (InnoDB's consistent read,
    SQLite's WAL), so that writers are not held up meanwhile.
    """
    t = transactions
    query = select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).order_by(t.c.user_id, t.c.ts)
    with engine.connect() as reader:
        result = reader.execution_options(yield_per=_REBUILD_CHUNK).execute(query)
        for rows in result.partitions():
            yield [Transaction(*row) for row in rows]


def _sort_out(txns: Sequence[Transaction], stored: dict[str, Transaction]) -> Committed:
    """What storing `txns` does, given the `stored` transactions of their txn_ids.

    A txn_id's first comer wins: the stored transaction, else its first in `txns`, which
    is new. One that comes again unchanged is a duplicate; with another user, amount or
    time, a conflict (a dead letter whose reason names the fields that differ).
    """
    committed, first, again = Committed(), dict(stored), {}
    for tx in txns:
        winner = first.get(tx.txn_id)
        if winner is None:
            first[tx.txn_id] = tx
            committed.new.append(tx)
        elif winner == tx:
            committed.duplicates += 1
            if tx.txn_id in stored:
                again[tx.txn_id] = winner
        else:
            fields = [
                name
                for name, first_value, value in (
                    ("user_id", winner.user_id, tx.user_id),
                    ("amount", winner.amount, tx.amount),
                    ("time", winner.ts, tx.ts),
                )
                if first_value != value
            ]
            differ = "differs" if len(fields) == 1 else "differ"
            reason = f"{CONFLICT}: its {_listed(fields)} {differ}"
            committed.rejected.append(dead_letter(format_line(tx), reason))
            committed.conflicts.append((tx.txn_id, fields))
    committed.stored_before = list(again.values())
    return committed


def _listed(names: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _stored(conn: Connection, txns: list[Transaction]) -> dict[str, Transaction]:
    """The stored transactions among `txns`' txn_ids, as stored."""
    t = transactions
    query = select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).where(
        t.c.txn_id.in_([tx.txn_id for tx in txns])
    )
    return {row.txn_id: Transaction(*row) for row in conn.execute(query)}


# The hot path writes its values as SQL literals: about 1.3 us a row, where PyMySQL's
# generic escaping takes 7.7 (timeit, 500 rows). This is the one place that makes them, and
# it checks each value's form, so nothing needs escaping: txn_ids of A-Z a-z 0-9 . _ : -,
# whole numbers, finite Decimals and datetimes. Amounts are quoted: SQLite keeps them as
# text (exact), and MySQL converts a quoted decimal exactly.
def _rows(txns: list[Transaction], now: datetime) -> str:
    """The VALUES rows of `txns` for INSERT INTO transactions."""
    received = sql_time(now)
    return ",".join(
        f"('{checked_txn_id(t.txn_id)}',{t.user_id:d},'{_money(t.amount)}','{sql_time(t.ts)}',"
        f"'{received}')"
        for t in txns
    )


def _window_rows(totals, now: datetime) -> str:
    """The VALUES rows of window totals for INSERT INTO user_window_totals."""
    updated, start = sql_time(now), functools.cache(sql_time)  # a few starts per batch
    return ",".join(
        f"({t.user_id:d},'{start(t.window_start)}',{t.tx_count:d},'{_money(t.amount_sum)}',"
        f"'{_money(t.amount_min)}','{_money(t.amount_max)}','{updated}')"
        for t in totals
    )


def _bucket_rows(totals) -> str:
    """The VALUES rows of bucket totals for INSERT INTO user_bucket_totals."""
    start = functools.cache(sql_time)  # a few per batch
    return ",".join(
        f"({user_id:d},'{start(bucket_start)}',{count:d},'{_money(amount_sum)}')"
        for user_id, bucket_start, count, amount_sum in totals
    )


def _money(amount) -> str:
    if not amount.is_finite():
        raise ValueError(f"not an amount: {amount!r}")
    return f"{amount:f}"
