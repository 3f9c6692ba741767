"""Each user's latest transactions in Redis, newest first by transaction time.

Transactions can arrive late, out of order or twice (a redelivery), and two subscribers
can write the same user at once, so a plain LPUSH would be wrong. Each user has a sorted
set: the member is the transaction's JSON text, the score its time in microseconds. ZADD
puts a late transaction in its place and ignores a repeat (same text); trimming to the
newest RECENT_SIZE follows in the same transaction. Equal times are ordered by the
member, whose text begins with the txn_id: so by (time, txn_id), newest first.
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

    def add(self, pipe: redis.client.Pipeline, txns: Iterable[Transaction]) -> None:
        """Queue on `pipe`, for each user in `txns`, the ZADD of theirs and the trim."""
        by_user: dict[int, list[Transaction]] = defaultdict(list)
        for tx in txns:
            by_user[tx.user_id].append(tx)
        for user_id, theirs in by_user.items():
            # Only a batch's newest few per user can be among the latest: a busy user
            # has hundreds in a batch, and only these are encoded and sent.
            if len(theirs) > RECENT_SIZE:
                theirs = heapq.nlargest(RECENT_SIZE, theirs, key=_recency)
            key = self.keys.recent(user_id)
            pipe.zadd(key, {to_json_text(tx): score(tx) for tx in theirs})
            pipe.zremrangebyrank(key, 0, -RECENT_SIZE - 1)  # all but the newest

    def read(self, user_id: int) -> list[dict]:
        """The user's latest transactions, newest first, as the API shows them."""
        items = self.client.zrange(self.keys.recent(user_id), 0, RECENT_SIZE - 1, desc=True)
        return [json.loads(item) for item in items]
