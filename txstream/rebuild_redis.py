"""Redis's derived state rebuilt from the database: the recent lists and the stored count.

The database is the truth; in Redis all but the stream is derived from it or only counts,
and Redis can lose it (FLUSHDB, a restart of a Redis that keeps nothing on disk; on a
cluster, one master's slots). Each partition has a marker (`Keys.derived`) in its slot,
written when its derived state is complete. While it is missing, the web app reads a
user's latest transactions from the database (txstream.api.read_recent), and a subscriber
rebuilds the partition:

- every CHECK_INTERVAL s, a thread of each subscriber (`Rebuilder`) reads the markers in
  one round trip; for a missing one it takes the partition's lock (`Keys.derived_lock`,
  which expires LOCK_MS after its last renewal), so that one subscriber at a time rebuilds
  a partition, and another takes over if it dies;
- the rebuild zeroes the partition's `stored` count, counts the partition's rows in the
  database, then reads each user's RECENT_SIZE newest, a chunk of users at a time
  (`newest_of_users`), and merges them into the lists with the batch script's own merge
  (txstream.recent), renewing the lock. A merge is right in any order, so what the
  subscribers store meanwhile is kept;
- last, in one script that checks that the lock is still its own, it adds the count to
  `stored`, writes the marker and lets go of the lock. A Redis that loses its data again
  meanwhile loses the lock too: that rebuild stops, and the next check starts another.

What lives only in Redis cannot be rebuilt: the duplicates count and the dead letters. The
marker holds the time from which the partition's duplicates count (`all` when nothing was
stored before it), `Keys.dead_since` the same for the dead letters; the console shows
"since <time>". `stored` is exact, but for a batch between its commit and its Redis write
as a rebuild begins: that one is counted twice.
`flask --app app rebuild-redis` runs the same rebuild at once, for every partition.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import redis
from sqlalchemy import Connection, Engine, Integer, bindparam, func, select

from models import transactions
from txstream import redisconn
from txstream.keys import Keys
from txstream.recent import MERGE_RECENT_LUA, RECENT_SIZE, merge_arguments
from txstream.runtime import Background
from txstream.times import format_time, utcnow
from txstream.transaction import Transaction
from txstream.wrongtype import REPLACE_LUA, log_replaced, replacing

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between a subscriber's looks at the markers
LOCK_MS = 60_000  # a rebuild's lock expires this long after its last renewal (a chunk)
USERS_PER_READ = 500  # users whose newest rows one statement reads
ALL = "all"  # a marker's `since` when every count is of all time

# Lua: KEYS: a partition's lock, marker, counts. ARGV: the rebuilder's name, the lock's
# lifetime (ms), '1' to rebuild even a complete partition. Takes the lock (or finds it
# its own), deletes the marker, zeroes `stored`: {1, replaced}. Else {the lock's holder,
# replaced}, or {0, replaced} when there is nothing to rebuild. A key of another type is
# replaced (`replaced`: txstream.wrongtype); a marker of another type is no marker.
_BEGIN = (
    REPLACE_LUA
    + """
local function usable(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == kind then return found end
  note(key, found)
  redis.call('DEL', key)
  return 'none'
end
usable(KEYS[1], 'string')
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {holder, replaced} end
if usable(KEYS[2], 'string') == 'string' and ARGV[3] ~= '1' then return {0, replaced} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
usable(KEYS[3], 'hash')
redis.call('HSET', KEYS[3], 'stored', 0)
return {1, replaced}
"""
)

# KEYS: the lock, then recent lists (of one partition). ARGV: the rebuilder's name, the
# lock's lifetime (ms), then for each list its number of items and the items, oldest
# first. Merges them if the lock is still the rebuilder's, and renews it: 1; else 0.
_MERGE = (
    MERGE_RECENT_LUA
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local pos = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[pos])
  merge_recent(KEYS[k], pos + 1, pos + n)
  pos = pos + n + 1
end
return 1
"""
)

# KEYS: the lock, marker, counts. ARGV: the rebuilder's name, the rows counted, the
# marker's value. If the lock is still the rebuilder's: adds the rows to `stored`, writes
# the marker, deletes the lock: 1; else 0.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[3], 'stored', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: the lock. ARGV: the rebuilder's name. Deletes the lock if it is the rebuilder's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class LostLock(Exception):
    """The rebuild's lock is gone (Redis lost its data again) or another's: it stops."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild did: the partitions rebuilt, their rows, the users whose lists were
    merged, and the partitions another rebuilder was doing (by its name)."""

    partitions: list[int]
    rows: int
    users: int
    held: dict[int, str]


_t = transactions
_COLUMNS = (_t.c.txn_id, _t.c.user_id, _t.c.amount, _t.c.ts)
_AFTER, _LAST = bindparam("after"), bindparam("last")


def _of(query, partitions: tuple[int, ...] | None, of: int):
    """`query` kept to the users of `partitions` (of `of`; None: every user)."""
    return query if partitions is None else query.where((_t.c.user_id % of).in_(partitions))


@functools.cache
def _statements(partitions: tuple[int, ...] | None, of: int) -> tuple:
    """The next users (ids above :after, at most :n); the RECENT_SIZE newest rows of each
    user with an id above :after, up to :last."""
    users = _of(select(_t.c.user_id).where(_t.c.user_id > _AFTER), partitions, of)
    users = users.group_by(_t.c.user_id).order_by(_t.c.user_id)
    newest_first = (_t.c.ts.desc(), _t.c.txn_id.desc())
    rank = func.row_number().over(partition_by=_t.c.user_id, order_by=newest_first)
    ranked = _of(select(*_COLUMNS, rank.label("n")), partitions, of)
    ranked = ranked.where(_t.c.user_id > _AFTER, _t.c.user_id <= _LAST).subquery()
    newest = select(*(ranked.c[c.name] for c in _COLUMNS)).where(ranked.c.n <= RECENT_SIZE)
    return users.limit(bindparam("n", type_=Integer)), newest


def newest_of_users(
    conn: Connection, partitions: Sequence[int] | None, of: int
) -> Iterator[tuple[int, list[Transaction]]]:
    """Each user's RECENT_SIZE newest transactions (by time, then txn_id), USERS_PER_READ
    users at a time in the order of their ids: how many users, and their transactions.
    Every user's, or those of `partitions` (of `of`).

    The users come from a loose scan of the (user_id, ...) index; their newest rows from a
    window function over the range of those users (docs/BENCHMARKS.md, "Rebuilding Redis":
    faster than a LIMIT per user, or than reading every row here)."""
    chosen = None if partitions is None else tuple(sorted(partitions))
    users, newest = _statements(chosen, of)
    after = -1
    while ids := conn.execute(users, {"after": after, "n": USERS_PER_READ}).scalars().all():
        rows = conn.execute(newest, {"after": after, "last": ids[-1]})
        yield len(ids), [Transaction(*row) for row in rows]
        after = ids[-1]


def count_users(conn: Connection) -> int:
    """How many users have stored transactions."""
    return conn.execute(select(func.count(_t.c.user_id.distinct()))).scalar_one()


def rows_by_partition(conn: Connection, of: int) -> dict[int, int]:
    """How many rows each partition (of `of`) holds."""
    partition = _t.c.user_id % of
    query = select(partition, func.count()).group_by(partition)
    return {int(p): count for p, count in conn.execute(query)}


class RedisRebuild:
    """Rebuilds what Redis derives from the database, as the rebuilder `owner` (a name)."""

    def __init__(self, engine: Engine, client: redis.Redis, keys: Keys, owner: str) -> None:
        self.engine = engine
        self.client = client
        self.keys = keys
        self.owner = owner
        register = client.register_script
        self._begin, self._merge = register(_BEGIN), register(_MERGE)
        self._finish, self._release = register(_FINISH), register(_RELEASE)

    def missing(self) -> list[int]:
        """The partitions whose derived state is not complete (one round trip); the dead
        letters' `since` is written if it is missing."""
        with self.client.pipeline(transaction=False) as pipe:
            for partition in range(self.keys.partitions):
                pipe.type(self.keys.derived(partition))
            pipe.type(self.keys.dead_since)
            *markers, dead_since = pipe.execute()
        if dead_since != b"string":  # missing, or of another type: replaced
            if dead_since != b"none":
                replacing(self.client, self.keys.dead_since)
            self.client.set(self.keys.dead_since, self._since(), nx=dead_since == b"none")
        return [p for p, kind in enumerate(markers) if kind != b"string"]

    def check(self, stopping: Callable[[], bool] = lambda: False) -> Rebuilt | None:
        """Rebuild the partitions whose derived state is missing, if any (`rebuild`)."""
        if missing := self.missing():
            return self.rebuild(missing, stopping=stopping)
        return None

    def rebuild(
        self,
        partitions: Sequence[int] | None = None,
        force: bool = False,
        done: Callable[[int], None] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> Rebuilt:
        """Rebuild `partitions` (None: all) whose markers are missing (with `force`, even
        complete ones), those whose lock it gets; `done(n)` after each chunk of `n` users.

        Raises `LostLock` when Redis loses a lock meanwhile, or `stopping()` says so: the
        partitions stay incomplete, their locks are let go.
        """
        wanted = range(self.keys.partitions) if partitions is None else partitions
        held, mine = {}, []
        for p in wanted:
            answer, replaced = self._begin(
                keys=self._state_keys(p), args=[self.owner, LOCK_MS, "1" if force else "0"]
            )
            log_replaced(replaced)
            if answer == 1:
                mine.append(p)
            elif answer != 0:
                held[p] = answer.decode("utf-8", "replace")
        if not mine:
            return Rebuilt([], 0, 0, held)
        try:
            return self._rebuild(mine, held, done or (lambda n: None), stopping)
        except BaseException:
            with contextlib.suppress(*redisconn.ERRORS):  # else they expire by themselves
                for p in mine:
                    self._release(keys=[self.keys.derived_lock(p)], args=[self.owner])
            raise

    def _rebuild(
        self,
        partitions: list[int],
        held: dict[int, str],
        done: Callable[[int], None],
        stopping: Callable[[], bool],
    ) -> Rebuilt:
        since = format_time(utcnow())
        of = self.keys.partitions
        log.warning("rebuilding Redis's recent lists and counts of partitions %s", partitions)
        users = 0
        with self.engine.connect() as conn:
            rows = rows_by_partition(conn, of)
            chosen = None if len(partitions) == of else partitions
            for chunk_users, txns in newest_of_users(conn, chosen, of):
                self._merge_chunk(txns)
                users += chunk_users
                done(chunk_users)
                if stopping():
                    raise LostLock("stopped")
        for p in partitions:
            marker = since if rows.get(p) else ALL
            finished = self._finish(
                keys=self._state_keys(p), args=[self.owner, rows.get(p, 0), marker]
            )
            if not finished:
                raise LostLock(f"the lock of partition {p} is gone")
        total = sum(rows.get(p, 0) for p in partitions)
        log.warning(
            "rebuilt Redis's recent lists of %d users and the count of %d rows (partitions %s)",
            users,
            total,
            partitions,
        )
        return Rebuilt(partitions, total, users, held)

    def _merge_chunk(self, txns: list[Transaction]) -> None:
        """Merge each user's newest into their list, a script call per partition."""
        by_partition: dict[int, list[Transaction]] = defaultdict(list)
        for tx in txns:
            by_partition[self.keys.partition_of(tx.user_id)].append(tx)
        for p, theirs in by_partition.items():
            lists, items = merge_arguments(self.keys, theirs)
            lock = self.keys.derived_lock(p)
            if not self._merge(keys=[lock, *lists], args=[self.owner, LOCK_MS, *items]):
                raise LostLock(f"the lock of partition {p} is gone")

    def _state_keys(self, partition: int) -> list[str]:
        keys = self.keys
        return [keys.derived_lock(partition), keys.derived(partition), keys.counts(partition)]

    def _since(self) -> str:
        """Now, if any row is stored: the counts that only Redis keeps are of since now."""
        with self.engine.connect() as conn:
            stored = conn.execute(select(_t.c.id).limit(1)).first() is not None
        return format_time(utcnow()) if stored else ALL


class Rebuilder(Background):
    """A subscriber's watch on Redis's derived state: every `interval` s, in a thread of its
    own, it rebuilds the partitions Redis lost (`RedisRebuild.check`)."""

    def __init__(self, rebuild: RedisRebuild, interval: float = CHECK_INTERVAL) -> None:
        super().__init__("rebuilding what Redis lost", self._check, interval, "rebuild-redis")
        self.rebuild = rebuild

    def _check(self) -> None:
        self.rebuild.check(self.stopping)
