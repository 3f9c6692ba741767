"""Checks of the stored state that several tests share: totals and latest-5 vs raw rows."""

from __future__ import annotations

from sqlalchemy import select

import models
from txstream.keys import Keys
from txstream.recent import RECENT_SIZE, RecentLists
from txstream.transaction import Transaction, to_json_text
from txstream.windows import window_totals

_COLUMNS = ("user_id", "window_start", "tx_count", "amount_sum", "amount_min", "amount_max")


def stored_transactions(engine) -> list[Transaction]:
    """Every stored transaction, oldest first (ties by txn_id)."""
    t = models.transactions
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).order_by(t.c.ts, t.c.txn_id)
        )
        return [Transaction(*row) for row in rows]


def assert_totals_match_raw_rows(engine, window_seconds: int) -> None:
    """user_window_totals must equal the totals rebuilt from the raw rows."""
    expected = [
        tuple(getattr(t, c) for c in _COLUMNS)
        for t in window_totals(stored_transactions(engine), window_seconds)
    ]
    table = models.user_window_totals
    with engine.connect() as conn:
        actual = conn.execute(
            select(*(table.c[c] for c in _COLUMNS)).order_by(table.c.user_id, table.c.window_start)
        ).all()
    assert [tuple(row) for row in actual] == expected


def assert_recent_lists_match_db(engine, client, prefix: str) -> None:
    """Each user's Redis list holds their latest 5 stored transactions, newest first, as
    the JSON texts the API returns for them."""
    by_user: dict[int, list[Transaction]] = {}
    for tx in reversed(stored_transactions(engine)):
        by_user.setdefault(tx.user_id, []).append(tx)
    keys = Keys(prefix)
    for user_id, txns in by_user.items():
        listed = client.lrange(keys.recent(user_id), 0, -1)
        expected = [to_json_text(tx).encode() for tx in txns[:RECENT_SIZE]]
        assert listed == expected, f"user {user_id}"
        assert RecentLists(client, keys).read(user_id) == txns[:RECENT_SIZE]
