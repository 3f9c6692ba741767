"""Tumbling windows aligned to the epoch, and per-(user, window) totals."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from txstream.transaction import Transaction
from txstream.windows import WindowTotal, window_start
from txstream.windows import window_totals as totals_of

HOUR = 3600
SIX_HOURS = 6 * HOUR
MICRO = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("ts", "seconds", "expected"),
    [
        # the seed's first transaction, 2019-10-06 10:37:49.483609 UTC
        (datetime(2019, 10, 6, 10, 37, 49, 483609), SIX_HOURS, datetime(2019, 10, 6, 6)),
        (datetime(2019, 10, 6, 23, 59, 59, 999999), SIX_HOURS, datetime(2019, 10, 6, 18)),
        (datetime(1970, 1, 1, 0, 0, 0, 1), SIX_HOURS, datetime(1970, 1, 1)),
        (datetime(2019, 10, 6, 10, 37, 49), HOUR, datetime(2019, 10, 6, 10)),
        (datetime(2019, 10, 6, 10, 37, 49), 15 * 60, datetime(2019, 10, 6, 10, 30)),
        (datetime(2019, 10, 6, 10, 37, 49), 90 * 60, datetime(2019, 10, 6, 10, 30)),
        (datetime(2019, 10, 6, 10, 37, 49), 24 * HOUR, datetime(2019, 10, 6)),
        # 7-day windows start on Thursdays: 1970-01-01 was one
        (datetime(2019, 10, 6, 10, 37, 49), 7 * 24 * HOUR, datetime(2019, 10, 3)),
        # WINDOW_HOURS=8760 (365 days), counted from the epoch, not from 1 January
        (datetime(2019, 10, 6, 10, 37, 49), 8760 * HOUR, datetime(2018, 12, 20)),
        (datetime(2019, 10, 6, 10, 37, 49), 1, datetime(2019, 10, 6, 10, 37, 49)),
    ],
)
def test_window_start(ts, seconds, expected):
    assert window_start(ts, seconds) == expected


@pytest.mark.parametrize("seconds", [1, 60, 5400, HOUR, SIX_HOURS, 24 * HOUR, 8760 * HOUR])
def test_a_window_start_belongs_to_its_own_window(seconds):
    start = datetime(1970, 1, 1) + timedelta(seconds=1_570_000_000 // seconds * seconds)
    assert window_start(start, seconds) == start
    assert window_start(start - MICRO, seconds) == start - timedelta(seconds=seconds)
    assert window_start(start + timedelta(seconds=seconds) - MICRO, seconds) == start


def _tx(txn_id: str, user_id: int, amount: str, ts: datetime) -> Transaction:
    return Transaction(txn_id, user_id, Decimal(amount), ts)


def test_window_totals_per_user_and_window():
    day = datetime(2019, 10, 6)
    txns = [
        _tx("a", 2, "10.00", day + timedelta(hours=7)),
        _tx("b", 1, "-5.50", day + timedelta(hours=6)),  # exactly at a window start
        _tx("c", 1, "0.10", day + timedelta(hours=6) - MICRO),  # the previous window
        _tx("d", 1, "0.20", day + timedelta(hours=11, minutes=59)),
        _tx("e", 2, "-3.00", day + timedelta(hours=8)),
        _tx("f", 1, "7.25", day + timedelta(hours=6, seconds=1)),
        _tx("g", 1, "0.10", day + timedelta(hours=1)),
    ]
    assert totals_of(txns, SIX_HOURS) == [
        WindowTotal(1, day, 2, Decimal("0.20"), Decimal("0.10"), Decimal("0.10")),
        WindowTotal(
            1, day + timedelta(hours=6), 3, Decimal("1.95"), Decimal("-5.50"), Decimal("7.25")
        ),
        WindowTotal(
            2, day + timedelta(hours=6), 2, Decimal("7.00"), Decimal("-3.00"), Decimal("10.00")
        ),
    ]


def test_window_totals_are_sorted_by_user_then_window():
    day = datetime(2019, 10, 6)
    txns = [
        _tx(str(i), user_id, "1", day + timedelta(hours=hours))
        for i, (user_id, hours) in enumerate([(3, 13), (1, 19), (3, 1), (2, 7), (1, 2)])
    ]
    keys = [(t.user_id, t.window_start) for t in totals_of(txns, SIX_HOURS)]
    assert keys == sorted(keys)
    assert len(keys) == 5


def test_late_transaction_gets_its_own_window():
    now = datetime(2019, 10, 6, 10, 37, 49)
    late = now - timedelta(days=3)
    txns = [_tx("new", 1, "100", now), _tx("late", 1, "-1", late)]
    assert totals_of(txns, SIX_HOURS) == [
        WindowTotal(1, datetime(2019, 10, 3, 6), 1, Decimal(-1), Decimal(-1), Decimal(-1)),
        WindowTotal(1, datetime(2019, 10, 6, 6), 1, Decimal(100), Decimal(100), Decimal(100)),
    ]


def test_window_totals_are_exact_beyond_one_amounts_precision():
    biggest = Decimal("999999999999999999.99")
    ts = datetime(2019, 10, 6, 10)
    txns = [_tx(str(i), 1, str(biggest), ts) for i in range(1000)]
    (total,) = totals_of(txns + [_tx("tiny", 1, "0.01", ts)], SIX_HOURS)
    assert total.tx_count == 1001
    assert total.amount_sum == Decimal("999999999999999999990.01")
    assert (total.amount_min, total.amount_max) == (Decimal("0.01"), biggest)


def test_cents_add_up_exactly():
    ts = datetime(2019, 10, 6, 10)
    (total,) = totals_of([_tx(str(i), 1, "0.10", ts) for i in range(3)], SIX_HOURS)
    assert total.amount_sum == Decimal("0.30")


def test_no_transactions_no_totals():
    assert totals_of([], SIX_HOURS) == []
