"""Tumbling windows and buckets aligned to the epoch, and the totals of a batch in each."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from txstream.money import MONEY_CONTEXT
from txstream.times import from_micros, to_micros
from txstream.transaction import Transaction


def window_start(ts: datetime, window_seconds: int) -> datetime:
    """Start of the window of `window_seconds` that holds `ts` (windows start at the epoch)."""
    length = window_seconds * 10**6
    return from_micros(to_micros(ts) // length * length)


@dataclass(slots=True)
class WindowTotal:
    """Count, sum, min and max of some transactions of one user in one window."""

    user_id: int
    window_start: datetime
    tx_count: int
    amount_sum: Decimal
    amount_min: Decimal
    amount_max: Decimal

    def add(self, amount: Decimal) -> None:
        """Count one more transaction of `amount`."""
        self.tx_count += 1
        self.amount_sum = MONEY_CONTEXT.add(self.amount_sum, amount)
        self.amount_min = min(self.amount_min, amount)
        self.amount_max = max(self.amount_max, amount)


def window_totals(txns: Iterable[Transaction], window_seconds: int) -> list[WindowTotal]:
    """Totals per (user, window) of `txns`, sorted by key so that locks are taken in order."""
    length = window_seconds * 10**6
    # [count, sum, min, max] by (user, window number): the subscriber's hot path.
    totals: dict[tuple[int, int], list] = {}
    add = MONEY_CONTEXT.add
    for tx in txns:
        key = (tx.user_id, to_micros(tx.ts) // length)
        total = totals.get(key)
        amount = tx.amount
        if total is None:
            totals[key] = [1, amount, amount, amount]
        else:
            total[0] += 1
            total[1] = add(total[1], amount)
            if amount < total[2]:
                total[2] = amount
            elif amount > total[3]:
                total[3] = amount
    start = functools.cache(lambda window: from_micros(window * length))  # a few per batch
    return [
        WindowTotal(user_id, start(window), *totals[user_id, window])
        for user_id, window in sorted(totals)
    ]


def bucket_totals(
    txns: Iterable[Transaction], bucket_seconds: int
) -> list[tuple[int, datetime, int, Decimal]]:
    """(user_id, bucket_start, count, sum) per (user, bucket) of `txns`, sorted by key."""
    length = bucket_seconds * 10**6
    totals: dict[tuple[int, int], list] = {}
    add = MONEY_CONTEXT.add
    for tx in txns:
        key = (tx.user_id, to_micros(tx.ts) // length)
        total = totals.get(key)
        if total is None:
            totals[key] = [1, tx.amount]
        else:
            total[0] += 1
            total[1] = add(total[1], tx.amount)
    start = functools.cache(lambda bucket: from_micros(bucket * length))
    return [
        (user_id, start(bucket), *totals[user_id, bucket]) for user_id, bucket in sorted(totals)
    ]
