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


def window_totals(txns: Iterable[Transaction], window_seconds: int) -> list[WindowTotal]:
    """Totals per (user, window) of `txns`, sorted by key so that locks are taken in order."""
    return totals(txns, window_seconds, window_seconds)[0]


def bucket_totals(txns: Iterable[Transaction], bucket_seconds: int) -> list[BucketTotal]:
    """(user_id, bucket_start, count, sum) per (user, bucket) of `txns`, sorted by key."""
    return totals(txns, bucket_seconds, bucket_seconds)[1]


BucketTotal = tuple[int, datetime, int, Decimal]  # user_id, bucket_start, count, sum


def totals(
    txns: Iterable[Transaction], window_seconds: int, bucket_seconds: int
) -> tuple[list[WindowTotal], list[BucketTotal]]:
    """The window totals and the bucket totals of `txns`, in one pass: the subscriber's hot
    path. Each list is sorted by key, so that locks are taken in order."""
    window_length, bucket_length = window_seconds * 10**6, bucket_seconds * 10**6
    # By (user, window number): [count, sum, min, max]; by (user, bucket number): [count, sum]
    windows: dict[tuple[int, int], list] = {}
    buckets: dict[tuple[int, int], list] = {}
    add = MONEY_CONTEXT.add
    for tx in txns:
        micros, amount = to_micros(tx.ts), tx.amount
        window = windows.get(key := (tx.user_id, micros // window_length))
        if window is None:
            windows[key] = [1, amount, amount, amount]
        else:
            window[0] += 1
            window[1] = add(window[1], amount)
            if amount < window[2]:
                window[2] = amount
            elif amount > window[3]:
                window[3] = amount
        bucket = buckets.get(key := (tx.user_id, micros // bucket_length))
        if bucket is None:
            buckets[key] = [1, amount]
        else:
            bucket[0] += 1
            bucket[1] = add(bucket[1], amount)
    window_start = functools.cache(lambda n: from_micros(n * window_length))  # few a batch
    bucket_start = functools.cache(lambda n: from_micros(n * bucket_length))
    return (
        [WindowTotal(user, window_start(n), *windows[user, n]) for user, n in sorted(windows)],
        [(user, bucket_start(n), *buckets[user, n]) for user, n in sorted(buckets)],
    )
