"""Writes a batch of transactions: rows and window totals in MySQL, then Redis.

One database transaction per batch keeps the raw rows and `user_window_totals` equal:
a txn_id already stored is skipped, and only the rows actually inserted are added to
the totals. Redis is written after the commit, so it never shows what MySQL lacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, IntegrityError

from models import transactions, user_window_totals
from txstream.keys import Keys
from txstream.money import money_add, money_greatest, money_least
from txstream.recent import RecentLists
from txstream.windows import window_totals
from txstream.wire import Transaction, dead_letter, format_line, utcnow

log = logging.getLogger(__name__)

# A concurrent subscriber may insert the same txn_id between our check and our
# insert; the batch is then rolled back and checked again.
_CONFLICT_RETRIES = 5


@dataclass
class Committed:
    """What a committed batch changed."""

    new: list[Transaction] = field(default_factory=list)  # inserted now
    # Stored by an earlier batch: a redelivery, maybe after a crash between commit and
    # the Redis update, so they go to the latest-5 lists again (the merge skips repeats).
    stored_before: list[Transaction] = field(default_factory=list)
    duplicates: int = 0  # txn_ids stored before, or repeated within the batch
    rejected: list[dict] = field(default_factory=list)  # dead letters from the DB


class Store:
    """Stores batches of transactions in the database and the Redis lists."""

    def __init__(self, engine: Engine, client: redis.Redis, keys: Keys, window_seconds: int):
        self.engine = engine
        self.client = client
        self.keys = keys
        self.window_seconds = window_seconds
        self.recent = RecentLists(client, keys)

    def commit(self, txns: Sequence[Transaction]) -> Committed:
        """Insert the new transactions and add them to their windows, in one DB transaction.

        Connection errors propagate, with nothing committed, for the caller to retry.
        """
        first: dict[str, Transaction] = {}
        for tx in txns:
            first.setdefault(tx.txn_id, tx)
        unique = list(first.values())
        try:
            committed = self._commit_with_retry(unique)
        except DataError:
            # Not expected after parsing; but one bad row must not cost the others.
            log.exception("the database rejected a batch; storing it row by row")
            committed = self._commit_one_by_one(unique)
        committed.duplicates += len(txns) - len(unique)
        return committed

    def update_redis(self, new: Sequence[Transaction], dead_letters: Sequence[dict]) -> None:
        """Merge `new` into the latest-5 lists and append the dead letters, in one pipeline."""
        with self.client.pipeline(transaction=False) as pipe:
            self.queue_redis_updates(pipe, new, dead_letters)
            pipe.execute()

    def queue_redis_updates(
        self, pipe: redis.client.Pipeline, new: Sequence[Transaction], dead_letters: Sequence[dict]
    ) -> None:
        """Queue on `pipe` the latest-5 merges of `new` and the dead letters."""
        self.recent.add(pipe, new)
        if dead_letters:
            pipe.rpush(self.keys.dead, *(json.dumps(d) for d in dead_letters))

    def _commit_with_retry(self, txns: list[Transaction]) -> Committed:
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return self._insert_new(conn, txns)
            except IntegrityError:
                if attempt == _CONFLICT_RETRIES:
                    raise
                log.info("txn_id conflict with another writer; retrying the batch")
        raise AssertionError("unreachable")

    def _commit_one_by_one(self, txns: list[Transaction]) -> Committed:
        committed = Committed()
        for tx in txns:
            try:
                one = self._commit_with_retry([tx])
            except DataError as exc:
                reason = f"rejected by the database: {exc.orig}"
                committed.rejected.append(dead_letter(format_line(tx), reason, utcnow()))
                continue
            committed.new += one.new
            committed.stored_before += one.stored_before
            committed.duplicates += one.duplicates
        return committed

    def _insert_new(self, conn: Connection, txns: list[Transaction]) -> Committed:
        if not txns:
            return Committed()
        t = transactions
        rows = conn.execute(
            select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).where(
                t.c.txn_id.in_([tx.txn_id for tx in txns])
            )
        )
        stored = {row.txn_id: Transaction(*row) for row in rows}
        new = [tx for tx in txns if tx.txn_id not in stored]
        if new:
            now = utcnow()
            conn.execute(
                transactions.insert(),
                [
                    {
                        "txn_id": tx.txn_id,
                        "user_id": tx.user_id,
                        "amount": tx.amount,
                        "ts": tx.ts,
                        "received_at": now,
                    }
                    for tx in new
                ],
            )
            self._add_to_windows(conn, new, now)
        return Committed(new, list(stored.values()), duplicates=len(stored))

    def _add_to_windows(self, conn: Connection, new: list[Transaction], now) -> None:
        rows = [
            {
                "user_id": t.user_id,
                "window_start": t.window_start,
                "tx_count": t.tx_count,
                "amount_sum": t.amount_sum,
                "amount_min": t.amount_min,
                "amount_max": t.amount_max,
                "updated_at": now,
            }
            for t in window_totals(new, self.window_seconds)
        ]
        table = user_window_totals
        if conn.dialect.name == "sqlite":
            stmt = sqlite_insert(table)
            incoming = stmt.excluded
        else:
            stmt = mysql_insert(table)
            incoming = stmt.inserted
        merged = {
            "tx_count": table.c.tx_count + incoming.tx_count,
            "amount_sum": money_add(table.c.amount_sum, incoming.amount_sum),
            "amount_min": money_least(table.c.amount_min, incoming.amount_min),
            "amount_max": money_greatest(table.c.amount_max, incoming.amount_max),
            "updated_at": incoming.updated_at,
        }
        if conn.dialect.name == "sqlite":
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "window_start"], set_=merged
            )
        else:
            stmt = stmt.on_duplicate_key_update(merged)
        conn.execute(stmt, rows)
