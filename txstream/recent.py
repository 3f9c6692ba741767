"""Each user's latest transactions in Redis, newest first by transaction time.

Transactions can arrive late, out of order or twice (a redelivery), and two subscribers
can write the same user at once, so a plain LPUSH would be wrong. Each user has a sorted
set: the member is the transaction's JSON text, the score its time in microseconds. ZADD
puts a late transaction in its place and ignores a repeat (same text); the trim to the
newest RECENT_SIZE runs in the same script call, atomically. Equal times are ordered by
the member, whose text begins with the txn_id: so by (time, txn_id), newest first.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

import redis

from txstream.keys import Keys
from txstream.wire import EPOCH, Transaction, to_json_text

RECENT_SIZE = 5

# One call per batch does every user's ZADD and trim: one command to encode and one
# reply to read instead of two per user (the subscriber's Redis stage is busy Python).
# KEYS: the users' sets. ARGV[1]: how many to keep; then, for each key in turn, its
# number of items and the items as score, member pairs.
_ADD = """
local keep = tonumber(ARGV[1])
local pos = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  redis.call('ZADD', KEYS[k], unpack(ARGV, pos + 1, pos + 2 * n))
  redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -keep - 1)
  pos = pos + 2 * n + 1
end
return #KEYS
"""
_MICROSECOND = timedelta(microseconds=1)


def score(tx: Transaction) -> int:
    """Microseconds since the epoch: exact in a Redis score (a double) until the year 2255."""
    return (tx.ts - EPOCH) // _MICROSECOND


def _recency(tx: Transaction) -> tuple:
    return tx.ts, tx.txn_id  # the order of the sorted set: score, then member text


class RecentLists:
    """Reads and updates the per-user latest-transactions sets."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._add = client.register_script(_ADD)

    def add(self, pipe: redis.client.Pipeline, txns: Iterable[Transaction]) -> None:
        """Queue on `pipe` one script call that adds `txns` to their users' sets."""
        by_user: dict[int, list[Transaction]] = defaultdict(list)
        for tx in txns:
            by_user[tx.user_id].append(tx)
        if not by_user:
            return
        args: list[object] = [RECENT_SIZE]
        for theirs in by_user.values():
            # Only a batch's newest few per user can be among the latest: a busy user
            # has hundreds in a batch, and only these are encoded and sent.
            if len(theirs) > RECENT_SIZE:
                theirs = heapq.nlargest(RECENT_SIZE, theirs, key=_recency)
            args.append(len(theirs))
            for tx in theirs:
                args += (score(tx), to_json_text(tx))
        keys = [self.keys.recent(user_id) for user_id in by_user]
        self._add(keys=keys, args=args, client=pipe)

    def read(self, user_id: int) -> list[dict]:
        """The user's latest transactions, newest first, as the API shows them."""
        items = self.client.zrange(self.keys.recent(user_id), 0, RECENT_SIZE - 1, desc=True)
        return [json.loads(item) for item in items]
