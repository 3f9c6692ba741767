"""The batch store, on fakeredis + SQLite and on the real Redis + MariaDB.

Every test runs on both backends; after each change the window totals must equal
what the stored raw rows give.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from models import transactions, user_window_totals
from txstream.keys import Keys
from txstream.store import Committed, Store
from txstream.windows import window_totals
from txstream.wire import Transaction, dead_letter, format_line, to_json

WINDOW = 6 * 3600
T0 = datetime(2019, 10, 6, 10, 37, 49, 483609)  # the seed's first transaction
BIGGEST = Decimal("999999999999999999.99")


@pytest.fixture(
    params=["sqlite+fakeredis", pytest.param("mariadb+redis", marks=pytest.mark.services)]
)
def store(request, key_prefix):
    """A Store on one of the two backends, with empty tables and keys of its own."""
    if request.param == "sqlite+fakeredis":
        engine = request.getfixturevalue("sqlite_engine")
        client = request.getfixturevalue("fake_redis")
    else:
        engine = request.getfixturevalue("mysql_engine")
        client = request.getfixturevalue("redis_client")
    return Store(engine, client, Keys(key_prefix), WINDOW)


def tx(txn_id: str, user_id: int = 1, amount: str | Decimal = "1.00", at: datetime = T0):
    return Transaction(txn_id, user_id, Decimal(amount), at)


def store_batches(store: Store, *batches: list[Transaction]) -> list[Committed]:
    """Commit each batch and update Redis, as the subscriber does."""
    results = []
    for batch in batches:
        committed = store.commit(batch)
        store.update_redis(committed.new, committed.rejected)
        results.append(committed)
        assert_totals_match_rows(store)
    return results


def stored_rows(store: Store) -> list[Transaction]:
    t = transactions
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts)).all()
    return sorted((Transaction(*row) for row in rows), key=lambda row: row.txn_id)


def table_totals(store: Store) -> list[tuple]:
    t = user_window_totals
    columns = (t.c.user_id, t.c.window_start, t.c.tx_count)
    money = (t.c.amount_sum, t.c.amount_min, t.c.amount_max)
    with store.engine.connect() as conn:
        rows = conn.execute(select(*columns, *money).order_by(t.c.user_id, t.c.window_start))
        return [tuple(row) for row in rows]


def assert_totals_match_rows(store: Store) -> None:
    """`user_window_totals` equals the totals recomputed from the raw rows."""
    expected = [
        (t.user_id, t.window_start, t.tx_count, t.amount_sum, t.amount_min, t.amount_max)
        for t in window_totals(stored_rows(store), WINDOW)
    ]
    assert table_totals(store) == expected


def recent(store: Store, user_id: int) -> list[dict]:
    return store.recent.read(user_id)


def test_commit_reports_what_it_stored(store):
    batch = [tx("a"), tx("b", user_id=2, amount="-44690489068"), tx("c", at=T0 + timedelta(1))]
    (committed,) = store_batches(store, batch)
    assert committed == Committed(new=batch, duplicates=0, rejected=[])
    assert stored_rows(store) == batch


def test_repeat_within_a_batch_is_stored_and_counted_once(store):
    first = tx("a", amount="5")
    (committed,) = store_batches(store, [first, tx("b"), tx("a", amount="7"), first])
    # the first arrival wins, as it does across batches
    assert sorted(committed.new, key=lambda t: t.txn_id) == [first, tx("b")]
    assert (committed.duplicates, committed.rejected) == (2, [])
    assert stored_rows(store) == [first, tx("b")]
    assert table_totals(store) == [
        (1, datetime(2019, 10, 6, 6), 2, Decimal(6), Decimal(1), Decimal(5))
    ]


def test_repeat_across_batches_is_stored_and_counted_once(store):
    results = store_batches(
        store,
        [tx("a", amount="5"), tx("b")],
        [tx("b", amount="9"), tx("c", amount="2"), tx("a", amount="5")],
        [tx("c", amount="2")],
    )
    assert [(len(c.new), c.duplicates) for c in results] == [(2, 0), (1, 2), (0, 1)]
    assert table_totals(store) == [
        (1, datetime(2019, 10, 6, 6), 3, Decimal(8), Decimal(1), Decimal(5))
    ]
    assert [item["txn_id"] for item in recent(store, 1)] == ["c", "b", "a"]


def test_txn_ids_are_case_sensitive(store):
    (committed,) = store_batches(store, [tx("a", amount="1"), tx("A", amount="2")])
    assert len(committed.new) == 2
    (committed,) = store_batches(store, [tx("A", amount="3"), tx("a", amount="4")])
    assert (committed.new, committed.duplicates, committed.rejected) == ([], 2, [])
    # What was stored first, not what came again: that is what goes to the Redis lists.
    assert sorted((t.txn_id, t.amount) for t in committed.stored_before) == [
        ("A", Decimal("2.00")),
        ("a", Decimal("1.00")),
    ]
    assert [row.txn_id for row in stored_rows(store)] == ["A", "a"]
    assert table_totals(store)[0][2:] == (2, Decimal(3), Decimal(1), Decimal(2))


def _mixed_traffic() -> list[list[Transaction]]:
    """Batches over 3 users and several windows, with repeats and late arrivals."""
    txns = [
        tx(
            f"t{i}",
            user_id=1 + i % 3,
            amount=Decimal((-1) ** i * (i * 7919 % 100000)).scaleb(-2),
            at=T0 + timedelta(hours=(i * 37) % 50 - 25, microseconds=i),
        )
        for i in range(60)
    ]
    batches = [txns[i : i + 7] for i in range(0, len(txns), 7)]
    # repeats of earlier ids, with other amounts, and a repeat inside one batch
    batches.append([tx("t3", amount="1000"), tx("t61", amount="0.01"), tx("t61", amount="2")])
    return batches


def test_totals_equal_the_raw_rows_after_every_batch(store):
    results = store_batches(store, *_mixed_traffic())  # checks after each batch
    assert sum(len(c.new) for c in results) == 61
    assert sum(c.duplicates for c in results) == 2
    assert sum(row[2] for row in table_totals(store)) == 61
    assert len(table_totals(store)) > 3


@pytest.mark.parametrize(
    ("amounts", "batch_size", "expected"),
    [
        ([BIGGEST] * 1000, 1000, ("999999999999999999990.00", BIGGEST, BIGGEST)),
        ([BIGGEST] * 1000, 300, ("999999999999999999990.00", BIGGEST, BIGGEST)),
        ([-BIGGEST] * 1000, 300, ("-999999999999999999990.00", -BIGGEST, -BIGGEST)),
        ([BIGGEST, -BIGGEST, Decimal("0.01")] * 5, 4, ("0.05", -BIGGEST, BIGGEST)),
    ],
    ids=["1000-max-one-batch", "1000-max-in-4-batches", "1000-min-in-4-batches", "mixed"],
)
def test_sums_of_large_amounts_are_exact(store, amounts, batch_size, expected):
    txns = [tx(f"big-{i}", amount=a) for i, a in enumerate(amounts)]
    batches = [txns[i : i + batch_size] for i in range(0, len(txns), batch_size)]
    store_batches(store, *batches)
    (total,) = table_totals(store)
    amount_sum, amount_min, amount_max = expected
    assert total[2:] == (len(amounts), Decimal(amount_sum), amount_min, amount_max)


def test_late_transaction_lands_in_its_own_window(store):
    store_batches(store, [tx("now", amount="10"), tx("now2", amount="20")])
    store_batches(store, [tx("late", amount="-3", at=T0 - timedelta(days=3))])
    assert table_totals(store) == [
        (1, datetime(2019, 10, 3, 6), 1, Decimal(-3), Decimal(-3), Decimal(-3)),
        (1, datetime(2019, 10, 6, 6), 2, Decimal(30), Decimal(10), Decimal(20)),
    ]


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_recent_holds_the_latest_five_newest_first(store, batch_size):
    seconds = [5, 1, 9, 3, 7, 2, 8, 6]
    txns = [tx(f"r{i}", at=T0 + timedelta(seconds=s)) for i, s in enumerate(seconds)]
    store_batches(store, *(txns[i : i + batch_size] for i in range(0, len(txns), batch_size)))
    newest = sorted(txns, key=lambda t: t.ts, reverse=True)[:5]
    assert recent(store, 1) == [to_json(t) for t in newest]


def test_recent_breaks_time_ties_by_txn_id_descending(store):
    # byte order, as in MySQL's ascii_bin and SQLite: "a" > "B" > "A", "tx-9" > "tx-10"
    ids = ["A", "tx-10", "a", "B", "tx-9", "0"]
    store_batches(store, [tx(txn_id) for txn_id in ids[:3]], [tx(txn_id) for txn_id in ids[3:]])
    assert [item["txn_id"] for item in recent(store, 1)] == ["tx-9", "tx-10", "a", "B", "A"]


def test_late_transaction_takes_its_place_in_recent(store):
    newer = [tx(f"n{s}", at=T0 + timedelta(seconds=s)) for s in (10, 20, 30, 40, 50)]
    store_batches(store, newer)
    store_batches(store, [tx("too-late", at=T0 - timedelta(days=2))])
    assert recent(store, 1) == [to_json(t) for t in newer[::-1]]
    middle = tx("middle", at=T0 + timedelta(seconds=25))
    store_batches(store, [middle])
    assert recent(store, 1) == [to_json(t) for t in [*newer[:1:-1], middle, newer[1]]]


def test_recent_never_holds_a_transaction_twice(store):
    a, b = tx("a"), tx("b", at=T0 - timedelta(seconds=1))
    store_batches(store, [a, a], [a, b], [b])
    store.update_redis([a, b, a], [])  # even when asked to add it again
    assert recent(store, 1) == [to_json(a), to_json(b)]


def test_recent_is_per_user(store):
    store_batches(store, [tx("u1", user_id=1), tx("u2", user_id=2), tx("u1b", user_id=1)])
    assert [item["txn_id"] for item in recent(store, 1)] == ["u1b", "u1"]
    assert recent(store, 2) == [to_json(tx("u2", user_id=2))]
    assert recent(store, 3) == []


def test_dead_letters_are_appended_as_json(store):
    first = dead_letter(b"1,\xff,2", "not valid UTF-8", T0)
    second = dead_letter("1,2", "expected 3 or 4 comma-separated fields, got 2", T0)
    store.update_redis([], [first])
    store.update_redis([tx("ok")], [second])
    dead = [json.loads(item) for item in store.client.lrange(store.keys.dead, 0, -1)]
    assert dead == [first, second]
    assert dead[0]["raw"] == "1,\\xff,2"
    assert [item["txn_id"] for item in recent(store, 1)] == ["ok"]


def test_an_empty_batch_changes_nothing(store):
    assert store_batches(store, []) == [Committed()]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(transactions)) == 0
    assert store.client.keys(store.keys.prefix + "*") == []


@pytest.mark.services
def test_a_value_mariadb_would_clip_is_a_dead_letter_not_a_stored_row(mysql_engine, redis_client):
    """MariaDB would clip it (INSERT IGNORE, with a warning) or refuse it (the window
    upsert): either way the batch is undone and only that row becomes a dead letter."""
    store = Store(mysql_engine, redis_client, Keys("test-clip:"), WINDOW)
    too_big = tx("too-big", amount=Decimal("1e25"))  # parse() never makes one; DECIMAL(20,2)
    committed = store.commit([tx("fine"), too_big])
    assert committed.new == [tx("fine")]
    assert [d["raw"] for d in committed.rejected] == [format_line(too_big)]
    assert "rejected by the database" in committed.rejected[0]["reason"]
    assert [row.txn_id for row in stored_rows(store)] == ["fine"]
    assert_totals_match_rows(store)


@pytest.mark.services
def test_a_redelivered_batch_inserts_only_its_new_rows(mysql_engine, redis_client):
    """Half stored before: the batch's first insert is undone, the rest goes in once."""
    store = Store(mysql_engine, redis_client, Keys("test-redelivery:"), WINDOW)
    first = [tx(f"r{i}", amount=f"{i}.00") for i in range(4)]
    store.commit(first[:2])
    committed = store.commit(first)
    assert (committed.new, committed.stored_before) == (first[2:], first[:2])
    assert [row.txn_id for row in stored_rows(store)] == ["r0", "r1", "r2", "r3"]
    assert_totals_match_rows(store)
