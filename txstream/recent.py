"""Each user's latest transactions: a Redis list, newest first, at most RECENT_SIZE items.

`LRANGE {prefix}recent:{user_id} 0 -1` shows exactly what `GET /api/users/<id>/recent`
returns: each item is the transaction's JSON text as the API writes it
(txstream.transaction), newest first by (time, txn_id).

Transactions arrive late, out of order or twice (a redelivery), and two subscribers may
write one user at once, so the lists are merged inside Redis, atomically, by a Lua
function that the subscriber's batch script calls for each user (txstream.store). Items
begin with their time at a fixed place, so the merge compares items without decoding
JSON. The usual case is a new transaction newer than the list's head: one LPUSH (and a
trim). Next, late transactions older than everything in a full list: left out, after one
look at its last item. Otherwise the list and the new items are merged, repeats dropped,
and written back only if something changed.

The web app reads a list with its partition's marker, in one script call (`latest`): a
Redis that lost its data has no marker, and the web app then reads the database until a
subscriber has rebuilt the lists (txstream.rebuild_redis).
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

import redis
from redis.commands.core import Script

from txstream.keys import Keys
from txstream.times import parse_time
from txstream.transaction import Transaction, from_json_text, to_json_text
from txstream.wrongtype import (
    REPLACE_LUA,
    WrongType,
    is_wrong_type,
    log_replaced,
    replacing,
)

log = logging.getLogger(__name__)

RECENT_SIZE = 5
LAYOUT = b"2"  # 1: sorted sets `latest:*` (score = time); 2: lists `recent:*`

# Lua: merge_recent(key, first, last) merges ARGV[first..last], a user's new items oldest
# first, into the list at `key`; it returns how many unreadable items it dropped, and a key
# of another type it replaces is noted (txstream.wrongtype).
#   Lua compares strings with strcoll(), and Redis takes LC_COLLATE from its environment:
# the fixed-width times compare by value in any locale, but txn_ids are compared byte by
# byte, as MySQL's ascii_bin collation and Python do.
#   It runs with the subscriber's Redis rights: deploy/redis.acl grants each command it calls.
MERGE_RECENT_LUA = (
    REPLACE_LUA
    + f"""
local RECENT = {RECENT_SIZE}
local function is_item(s)  -- {{"time":"YYYY-MM-DDTHH:MM:SS.ffffffZ","txn_id":"...
  return string.sub(s, 1, 9) == '{{"time":"' and string.sub(s, 37, 48) == '","txn_id":"'
end
local function txn_id(s)
  local stop = string.find(s, '"', 49, true)
  return string.sub(s, 49, (stop or #s + 1) - 1)
end
local function bytes_greater(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local function newer(a, b)  -- whether item a comes before item b in a list
  local ta, tb = string.sub(a, 10, 36), string.sub(b, 10, 36)
  if ta ~= tb then return ta > tb end
  return bytes_greater(txn_id(a), txn_id(b))
end
local function merge_recent(key, first, last)
  local head = redis.pcall('LINDEX', key, 0)
  if unusable(head) then  -- the key holds something else than a list
    note(key)
    redis.call('DEL', key)
    head = false
  end
  if not head or (is_item(head) and newer(ARGV[first], head)) then
    if redis.call('LPUSH', key, unpack(ARGV, first, last)) > RECENT then
      redis.call('LTRIM', key, 0, RECENT - 1)
    end
    return 0
  end
  if redis.call('LLEN', key) == RECENT then  -- full: are all the new items too old for it?
    local last_kept = redis.call('LINDEX', key, RECENT - 1)
    if is_item(last_kept) and newer(last_kept, ARGV[last]) then
      return 0
    end
  end
  local old = redis.call('LRANGE', key, 0, RECENT - 1)
  local merged, seen, dropped = {{}}, {{}}, 0
  for i = first, last do
    seen[ARGV[i]] = true
    merged[#merged + 1] = ARGV[i]
  end
  for _, item in ipairs(old) do
    if not is_item(item) then
      dropped = dropped + 1
    elseif not seen[item] then
      seen[item] = true
      merged[#merged + 1] = item
    end
  end
  table.sort(merged, newer)
  local keep = math.min(#merged, RECENT)
  local same = #old == keep
  for i = 1, keep do same = same and old[i] == merged[i] end
  if not same then
    redis.call('DEL', key)
    redis.call('RPUSH', key, unpack(merged, 1, keep))
  end
  return dropped
end
"""
)

# The migration's script: merge_recent for each key. ARGV: for each key in turn, its
# number of items, then the items.
_MERGE_ALL = (
    MERGE_RECENT_LUA
    + """
local pos, dropped = 1, 0
for k = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  dropped, pos = dropped + merge_recent(KEYS[k], pos + 1, pos + n), pos + n + 1
end
return {dropped, replaced}
"""
)


# The web app's read: the partition's marker (KEYS[1]: txstream.rebuild_redis) and the list
# (KEYS[2]) in one atomic call, so that a list is never taken for complete when Redis lost
# the partition's state, even between the two reads. Nil while the marker is missing.
_LATEST = Script(
    None,
    f"""
if not redis.call('GET', KEYS[1]) then return false end
return redis.call('LRANGE', KEYS[2], 0, {RECENT_SIZE - 1})
""".encode(),
)


def _recency(tx: Transaction) -> tuple:
    return tx.ts, tx.txn_id


def merge_arguments(keys: Keys, txns: Iterable[Transaction]) -> tuple[list[str], list]:
    """The keys and arguments that merge `txns` into their users' lists.

    Per user, in the keys' order: how many items, then the items, oldest first. Only a
    user's newest RECENT_SIZE can be among the latest: a busy user has hundreds in a batch.
    """
    by_user: dict[int, list[Transaction]] = defaultdict(list)
    for tx in txns:
        by_user[tx.user_id].append(tx)
    args: list = []
    for theirs in by_user.values():
        if len(theirs) > RECENT_SIZE:
            theirs = heapq.nlargest(RECENT_SIZE, theirs, key=_recency)
        args.append(len(theirs))
        args += (to_json_text(tx) for tx in sorted(theirs, key=_recency))
    return [keys.recent(user_id) for user_id in by_user], args


class RecentLists:
    """Reads the recent lists, and moves older layouts to them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def read(self, user_id: int) -> list[Transaction]:
        """The user's latest transactions, newest first.

        Whatever Redis holds: an item that is not a transaction of this user as txstream
        writes it is logged and skipped. A key of another type raises `WrongType` (the
        next batch of the user's partition replaces it).
        """
        key = self.keys.recent(user_id)
        try:
            items = self.client.lrange(key, 0, RECENT_SIZE - 1)
        except redis.ResponseError as exc:
            if is_wrong_type(exc):
                raise WrongType(key) from None
            log.error("recent list %s is unreadable (%s); showing none", key, exc)
            return []
        return self._parsed(key, user_id, items)[0]

    def latest(self, user_id: int) -> list[Transaction] | None:
        """The user's latest transactions, newest first, if Redis holds them all; else None,
        and the caller reads them from the database.

        None while the derived state of the user's partition is missing (Redis lost it, or
        it is being rebuilt: txstream.rebuild_redis), or when the list holds anything but
        the user's transactions as txstream writes them (logged). One round trip.
        """
        key = self.keys.recent(user_id)
        marker = self.keys.derived(self.keys.partition_of(user_id))
        try:
            items = _LATEST(keys=[marker, key], client=self.client)
        except redis.ResponseError as exc:
            log.error("recent list %s is unreadable (%s); reading the database", key, exc)
            return None
        if items is None:
            return None
        txns, unreadable = self._parsed(key, user_id, items)
        return None if unreadable else txns

    @staticmethod
    def _parsed(key: str, user_id: int, items: list[bytes]) -> tuple[list[Transaction], int]:
        """The items that are the user's transactions, and how many others (each logged)."""
        txns, unreadable = [], 0
        for item in items:
            try:
                tx = from_json_text(item)
            except ValueError as exc:
                log.error("recent list %s: skipping an unreadable item (%s)", key, exc)
                unreadable += 1
                continue
            if tx.user_id != user_id:
                log.error("recent list %s: skipping a transaction of user %d", key, tx.user_id)
                unreadable += 1
                continue
            txns.append(tx)
        return txns, unreadable

    def migrate(self) -> None:
        """Move the sorted sets of layout 1 into the lists, once per Redis (logged).

        Lists whose items have an older JSON form are rewritten on the way. Partitioned
        names (a cluster, STREAM_PARTITIONS > 1) came after the lists: nothing to move.
        """
        if self.keys.tagged:
            return
        try:
            if self.client.get(self.keys.layout) == LAYOUT:
                return
        except redis.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            replacing(self.client, self.keys.layout)  # overwritten below
        users, sets = set(), []
        for key in self.client.scan_iter(match=self.keys.old_recent_pattern, count=1000):
            if (user := self.keys.user_of(key)) is not None:
                users.add(user)
                sets.append(key)
        for key in self.client.scan_iter(match=self.keys.recent_pattern, count=1000):
            if (user := self.keys.user_of(key)) is not None:
                users.add(user)
        merge = self.client.register_script(_MERGE_ALL)
        moved = dropped = 0
        users_in_order = sorted(users)
        for start in range(0, len(users_in_order), 500):
            chunk = users_in_order[start : start + 500]
            txns, unreadable = self._old_items(chunk)
            keys, args = merge_arguments(self.keys, set(txns))  # a set: no repeats
            if keys:  # the merge drops the items of older forms read above
                log_replaced(merge(keys=keys, args=args)[1])
            moved += len(keys)
            dropped += unreadable
        if sets:
            for start in range(0, len(sets), 500):
                self.client.delete(*sets[start : start + 500])
        self.client.set(self.keys.layout, LAYOUT)
        if not users:  # a new Redis: nothing to move
            return
        log.info(
            "recent lists: moved the latest transactions of %d users from %d sorted sets "
            "(%s) to lists (%s) and deleted the sets; %d unreadable items dropped",
            moved,
            len(sets),
            self.keys.old_recent_pattern,
            self.keys.recent_pattern,
            dropped,
        )

    def _old_items(self, users: list[int]) -> tuple[list[Transaction], int]:
        """The transactions in the users' old sets and lists, and how many were unreadable."""
        with self.client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zrange(self.keys.old_recent(user), 0, -1)
                pipe.lrange(self.keys.recent(user), 0, -1)
            replies = pipe.execute(raise_on_error=False)
        txns, unreadable = [], 0
        for reply in replies:
            if isinstance(reply, Exception):  # a key of another type: nothing to move
                continue
            for item in reply:
                try:
                    txns.append(_from_any_json(item))
                except ValueError:
                    unreadable += 1
        return txns, unreadable


def _from_any_json(item: bytes) -> Transaction:
    """A transaction from its JSON text in any layout txstream has written."""
    try:
        return from_json_text(item)
    except ValueError:
        pass
    try:
        data = json.loads(item)
        if type(data["user_id"]) is not int:
            raise TypeError("user_id is not a whole number")
        tx = Transaction(
            data["txn_id"], data["user_id"], Decimal(data["amount"]), parse_time(data["time"])
        )
        to_json_text(tx)  # validates the txn_id
    except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"unreadable item: {exc}") from None
    return tx
