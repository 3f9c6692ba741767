"""The batch store, on fakeredis + SQLite and on the real Redis + MariaDB.

Every test taking `store` runs on each backend: SQLite with fakeredis, and MariaDB with
the real Redis through both of SQLAlchemy's URLs for it (`mysql+pymysql://` and
`mariadb+pymysql://`). After each batch the window totals must equal what the stored raw
rows give.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import redis
from sqlalchemy import delete, func, select

from models import settings, transactions, user_bucket_totals, user_window_totals
from tests.helpers import KINDS, retype
from txstream.aggregates import Layout, LayoutMismatch, recorded_layout
from txstream.keys import Keys
from txstream.recent import RecentLists
from txstream.store import CONFLICT, DEAD_LETTER_BYTES, Committed, Store, dead_letter
from txstream.testing import assert_totals_match_raw_rows
from txstream.times import MICROSECOND
from txstream.transaction import Transaction, to_json_text
from txstream.windows import window_totals
from txstream.wire import format_line

WINDOW = 6 * 3600
T0 = datetime(2019, 10, 6, 10, 37, 49, 483609)  # the seed's first transaction
BIGGEST = Decimal("999999999999999999.99")


BACKENDS = {  # backend: (engine fixture, Redis client fixture)
    "sqlite+fakeredis": ("sqlite_engine", "fake_redis"),
    "mysql+pymysql+redis": ("mysql_engine", "redis_client"),
    "mariadb+pymysql+redis": ("mariadb_engine", "redis_client"),
}


@pytest.fixture(
    params=[
        "sqlite+fakeredis",
        pytest.param("mysql+pymysql+redis", marks=pytest.mark.services),
        pytest.param("mariadb+pymysql+redis", marks=pytest.mark.services),
    ]
)
def store(request, key_prefix):
    """A Store on one of the backends, with empty tables and keys of its own."""
    engine, client = (request.getfixturevalue(name) for name in BACKENDS[request.param])
    return Store(engine, client, Keys(key_prefix, stream=key_prefix + "stream"), WINDOW)


def tx(txn_id: str, user_id: int = 1, amount: str | Decimal = "1.00", at: datetime = T0):
    return Transaction(txn_id, user_id, Decimal(amount), at)


def store_batches(store: Store, *batches: list[Transaction]) -> list[Committed]:
    """Store each batch as the subscriber does; check the totals after each."""
    results = []
    for batch in batches:
        results.append(store.store(batch))
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


def recent(store: Store, user_id: int) -> list[Transaction]:
    """The user's recent list as read back; its raw items must be their JSON texts."""
    txns = RecentLists(store.client, store.keys).read(user_id)
    raw = store.client.lrange(store.keys.recent(user_id), 0, -1)
    assert [item.decode() for item in raw] == [to_json_text(tx) for tx in txns]
    return txns


def test_commit_reports_what_it_stored(store):
    batch = [tx("a"), tx("b", user_id=2, amount="-44690489068"), tx("c", at=T0 + timedelta(1))]
    (committed,) = store_batches(store, batch)
    assert committed == Committed(new=batch, duplicates=0, rejected=[])
    assert stored_rows(store) == batch


def test_repeat_within_a_batch_is_stored_and_counted_once(store):
    first = tx("a", amount="5")
    (committed,) = store_batches(store, [first, tx("b"), tx("a", amount="5.00"), first])
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
        [tx("b"), tx("c", amount="2"), tx("a", amount="5")],
        [tx("c", amount="2")],
    )
    assert [(len(c.new), c.duplicates) for c in results] == [(2, 0), (1, 2), (0, 1)]
    assert table_totals(store) == [
        (1, datetime(2019, 10, 6, 6), 3, Decimal(8), Decimal(1), Decimal(5))
    ]
    assert [tx.txn_id for tx in recent(store, 1)] == ["c", "b", "a"]


CONFLICTING = [  # each differs from tx("a", amount="5") in one field: user, amount, time
    tx("a", user_id=2, amount="5"),
    tx("a", amount="5.01"),
    tx("a", amount="5", at=T0 + MICROSECOND),
    tx("a", user_id=3, amount="6", at=T0 + MICROSECOND),  # and in all three
]
DIFFER = ["user_id differs", "amount differs", "time differs", "user_id, amount and time differ"]


def dead_letters(store: Store) -> list[tuple[str, str]]:
    """The raw line and reason of each dead letter in Redis, oldest first."""
    items = store.client.lrange(store.keys.dead, 0, -1)
    return [(d["raw"], d["reason"]) for d in map(json.loads, items)]


def test_the_totals_of_an_earlier_txstreams_database_are_built_from_its_rows(store, monkeypatch):
    """Rows stored by a txstream that kept no buckets and recorded no layout: the first
    writer to start builds the windows and buckets from the raw rows (a chunk at a time:
    a (user, window) may span two chunks), records the layout, and stores on."""
    monkeypatch.setattr("txstream.store._REBUILD_CHUNK", 7)
    old = [tx(f"o{i}", 1 + i % 3, f"{i}.25", T0 + timedelta(minutes=7 * i)) for i in range(150)]
    store_batches(store, old)
    with store.engine.begin() as conn:  # as an earlier txstream left it, windows half gone
        conn.execute(delete(settings))
        conn.execute(delete(user_bucket_totals))
        conn.execute(delete(user_window_totals).where(user_window_totals.c.user_id == 1))

    upgraded = Store(store.engine, store.client, store.keys, WINDOW)
    upgraded.store([tx("new", 2, "9.99", T0 + timedelta(days=2))])

    assert_totals_match_raw_rows(store.engine, WINDOW)  # windows, buckets, the layout
    with store.engine.connect() as conn:
        assert recorded_layout(conn) == Layout(WINDOW, 60)


def test_a_writer_with_another_window_refuses_the_database(store):
    store_batches(store, [tx("a")])

    with pytest.raises(LayoutMismatch, match="set WINDOW_HOURS=6, or use another database"):
        Store(store.engine, store.client, store.keys, 3600).commit([tx("b")])
    assert stored_rows(store) == [tx("a")]


def test_a_prepared_batch_stores_only_what_is_not_stored_by_then(store):
    """The subscriber prepares a batch's statements before its turn; a redelivery or
    another subscriber may store some of it meanwhile."""
    batch = [tx("p1"), tx("p2", amount="2.50"), tx("p3", user_id=2)]
    prepared = store.prepare(batch)
    store_batches(store, [batch[1]])

    committed = store.commit(batch, prepared)

    assert [t.txn_id for t in committed.new] == ["p1", "p3"]
    assert [t.txn_id for t in committed.stored_before] == ["p2"]
    assert stored_rows(store) == batch
    assert_totals_match_rows(store)


def test_a_txn_id_again_with_another_user_amount_or_time_is_a_dead_letter(store, caplog):
    """The first one stored wins; within a batch as across batches. An exact repeat
    stays a counted duplicate. Each conflict is logged once, naming the fields that
    differ, and its dead letter's reason names them too."""
    first = tx("a", amount="5")
    in_batch, across = store_batches(
        store, [first, *CONFLICTING, first], [*CONFLICTING, tx("b"), first]
    )
    conflicts = [
        (format_line(t), f"{CONFLICT}: its {d}") for t, d in zip(CONFLICTING, DIFFER, strict=True)
    ]
    assert (in_batch.new, in_batch.duplicates) == ([first], 1)
    assert [(d["raw"], d["reason"]) for d in in_batch.rejected] == conflicts
    assert (across.new, across.stored_before, across.duplicates) == ([tx("b")], [first], 1)
    assert [(d["raw"], d["reason"]) for d in across.rejected] == conflicts
    assert stored_rows(store) == [first, tx("b")]
    assert dead_letters(store) == conflicts * 2
    assert recent(store, 1) == [tx("b"), first]
    assert recent(store, 2) == []
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    fields = ["user_id", "amount", "time", "user_id, amount and time"]
    assert (
        warned
        == [
            f"txn_id a came again with another {f} than the transaction stored first: "
            "kept as a dead letter"
            for f in fields
        ]
        * 2
    )


def test_txn_ids_are_case_sensitive(store):
    (committed,) = store_batches(store, [tx("a", amount="1"), tx("A", amount="2")])
    assert len(committed.new) == 2
    (committed,) = store_batches(store, [tx("A", amount="2"), tx("a", amount="1")])
    assert (committed.new, committed.duplicates, committed.rejected) == ([], 2, [])
    # What was stored first goes to the Redis lists again (the merge skips repeats).
    assert sorted((t.txn_id, t.amount) for t in committed.stored_before) == [
        ("A", Decimal("2.00")),
        ("a", Decimal("1.00")),
    ]
    (committed,) = store_batches(store, [tx("A", amount="1")])  # as "a", not as "A"
    assert [d["raw"] for d in committed.rejected] == [format_line(tx("A", amount="1"))]
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
    # ids again, with other amounts (conflicts), across batches and inside one; repeats
    batches.append([tx("t3", amount="1000"), tx("t61", amount="0.01"), tx("t61", amount="2")])
    batches.append([txns[5], tx("t61", amount="0.01")])
    return batches


def test_totals_equal_the_raw_rows_after_every_batch(store):
    results = store_batches(store, *_mixed_traffic())  # checks after each batch
    assert sum(len(c.new) for c in results) == 61
    assert sum(c.duplicates for c in results) == 2
    assert sum(len(c.rejected) for c in results) == 2
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
    assert recent(store, 1) == newest


def test_recent_breaks_time_ties_by_txn_id_descending(store):
    # byte order, as in MySQL's ascii_bin and SQLite: "a" > "B" > "A", "tx-9" > "tx-10"
    ids = ["A", "tx-10", "a", "B", "tx-9", "0"]
    store_batches(store, [tx(txn_id) for txn_id in ids[:3]], [tx(txn_id) for txn_id in ids[3:]])
    assert [tx.txn_id for tx in recent(store, 1)] == ["tx-9", "tx-10", "a", "B", "A"]


def test_late_transaction_takes_its_place_in_recent(store):
    newer = [tx(f"n{s}", at=T0 + timedelta(seconds=s)) for s in (10, 20, 30, 40, 50)]
    store_batches(store, newer)
    store_batches(store, [tx("too-late", at=T0 - timedelta(days=2))])
    assert recent(store, 1) == newer[::-1]
    middle = tx("middle", at=T0 + timedelta(seconds=25))
    store_batches(store, [middle])
    assert recent(store, 1) == [*newer[:1:-1], middle, newer[1]]


def test_a_late_transaction_at_the_time_of_the_fifth_is_placed_by_txn_id(store):
    newer = [tx(f"n{s}", at=T0 + timedelta(seconds=s)) for s in (10, 20, 30, 40, 50)]
    store_batches(store, newer)
    older = tx("n0", at=newer[0].ts)  # "n0" < "n10": after the fifth, so left out
    store_batches(store, [older])
    assert recent(store, 1) == newer[::-1]
    later = tx("n2", at=newer[0].ts)  # "n2" > "n10": before it, so it takes its place
    store_batches(store, [later])
    assert recent(store, 1) == [*newer[:0:-1], later]


def test_recent_never_holds_a_transaction_twice(store):
    a, b = tx("a"), tx("b", at=T0 - timedelta(seconds=1))
    store_batches(store, [a, a], [a, b], [b])
    store.write_redis(Committed(new=[b], stored_before=[a]), [])  # even when given again
    assert recent(store, 1) == [a, b]


def test_recent_is_per_user(store):
    store_batches(store, [tx("u1", user_id=1), tx("u2", user_id=2), tx("u1b", user_id=1)])
    assert [tx.txn_id for tx in recent(store, 1)] == ["u1b", "u1"]
    assert recent(store, 2) == [tx("u2", user_id=2)]
    assert recent(store, 3) == []


def test_dead_letters_are_appended_as_json(store):
    first = dead_letter(b"1,\xff,2", "not valid UTF-8", T0)
    second = dead_letter("1,2", "expected 3 or 4 comma-separated fields, got 2", T0)
    store.store([], [first])
    store.store([tx("ok")], [second])
    dead = [json.loads(item) for item in store.client.lrange(store.keys.dead, 0, -1)]
    assert dead == [first, second]
    assert dead[0]["raw"] == "1,\\xff,2"
    assert [tx.txn_id for tx in recent(store, 1)] == ["ok"]


@pytest.mark.parametrize(
    ("payload", "kept"),
    [
        (b"x" * 4096, 4096),
        (b"x" * 4097, 4096),  # the first 4 KiB at most
        (b"\xff" * (5 << 20), 1193),  # 5 MB, escaped: 5 characters a byte in JSON
        (b"\x01" * 5000, 995),  # 6 characters a byte: \u0001
        ("é" * 3000, 1990),  # 6 characters in 2 bytes: \u00e9
        ("😀" * 2000, 1989),  # 12 characters in 4 bytes; cut inside one: \\xf0
    ],
    ids=["4-KiB", "4-KiB-and-1", "5-MB-not-UTF-8", "control", "UTF-8", "astral"],
)
def test_a_dead_letter_keeps_what_fits_in_6_kib_its_size_and_hash(payload, kept):
    data = payload.encode() if isinstance(payload, str) else payload
    letter = dead_letter(payload, "why", T0)
    assert letter == {
        "raw": data[:kept].decode("utf-8", "backslashreplace"),
        "kept": kept,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "reason": "why",
        "at": "2019-10-06T10:37:49.483609Z",
    }
    assert len(json.dumps(letter)) <= DEAD_LETTER_BYTES


def test_the_dead_letter_list_keeps_the_newest(store):
    store.dead_letters_max = 3
    store.store([], [dead_letter(f"d{i}", "why") for i in range(2)])
    store.store([tx("ok")], [dead_letter(f"d{i}", "why") for i in range(2, 4)])
    assert [raw for raw, _ in dead_letters(store)] == ["d1", "d2", "d3"]
    store.store([], [dead_letter(f"d{i}", "why") for i in range(4, 9)])
    assert [raw for raw, _ in dead_letters(store)] == ["d6", "d7", "d8"]
    assert recent(store, 1) == [tx("ok")]


def test_an_empty_batch_changes_nothing(store):
    assert store_batches(store, []) == [Committed()]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(transactions)) == 0
    assert store.client.keys(store.keys.prefix + "*") == []


@pytest.fixture(
    params=[
        pytest.param("mysql_engine", marks=pytest.mark.services),
        pytest.param("mariadb_engine", marks=pytest.mark.services),
    ]
)
def mysql_store(request, redis_client, key_prefix):
    """A Store on MariaDB, through each of SQLAlchemy's two URLs for it."""
    engine = request.getfixturevalue(request.param)
    return Store(engine, redis_client, Keys(key_prefix), WINDOW)


def test_a_value_mariadb_would_clip_is_a_dead_letter_not_a_stored_row(mysql_store):
    """MariaDB would clip it (INSERT IGNORE, with a warning) or refuse it (the window
    upsert): either way the batch is undone and only that row becomes a dead letter."""
    too_big = tx("too-big", amount=Decimal("1e25"))  # parse() never makes one; DECIMAL(20,2)
    committed = mysql_store.commit([tx("fine"), too_big])
    assert committed.new == [tx("fine")]
    assert [d["raw"] for d in committed.rejected] == [format_line(too_big)]
    assert "rejected by the database" in committed.rejected[0]["reason"]
    assert [row.txn_id for row in stored_rows(mysql_store)] == ["fine"]
    assert_totals_match_rows(mysql_store)


def test_a_redelivered_batch_inserts_only_its_new_rows(store):
    """Half stored before: the batch's first insert is undone, the rest goes in once."""
    first = [tx(f"r{i}", amount=f"{i}.00") for i in range(4)]
    store.commit(first[:2])
    committed = store.commit(first)
    assert (committed.new, committed.stored_before) == (first[2:], first[:2])
    assert [row.txn_id for row in stored_rows(store)] == ["r0", "r1", "r2", "r3"]
    assert_totals_match_rows(store)


INJECTED_FAILURE = {  # a trigger that refuses the window totals of user 666
    "sqlite": "CREATE TRIGGER refuse_666 BEFORE INSERT ON user_window_totals "
    "WHEN NEW.user_id = 666 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    "mysql": "CREATE TRIGGER refuse_666 BEFORE INSERT ON user_window_totals FOR EACH ROW "
    "BEGIN IF NEW.user_id = 666 THEN "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'; END IF; END",
}


def test_a_batch_that_fails_midway_stores_nothing(store):
    """The rows and their window totals commit together, or not at all: on SQLite too,
    where the driver's own transaction handling would commit at the savepoint's end."""
    engine = store.engine
    kind = "sqlite" if engine.dialect.name == "sqlite" else "mysql"
    with engine.begin() as conn:
        conn.exec_driver_sql(INJECTED_FAILURE[kind])
    try:
        with pytest.raises(Exception, match="injected failure"):
            store.commit([tx("a"), tx("evil", user_id=666)])
        assert stored_rows(store) == []
        assert table_totals(store) == []
        store_batches(store, [tx("a"), tx("b", user_id=2)])  # the others still go in
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_666")
    assert [row.txn_id for row in stored_rows(store)] == ["a", "b"]


def test_tampered_recent_lists_are_repaired_by_the_next_batch(store, caplog):
    """A key of another type is replaced, items not in the list layout are dropped; an
    item in the layout that is no transaction stays, and reading skips it."""
    keys, client = store.keys, store.client
    client.set(keys.recent(1), "not a list")
    client.rpush(keys.recent(2), "junk", to_json_text(tx("old", user_id=2)), b"\xff")
    older = tx("older", user_id=3, at=T0 - timedelta(1))
    forged = '{"time":"9999-12-31T23:59:59.999999Z","txn_id":"x"}'
    client.rpush(keys.recent(3), forged, to_json_text(older))
    newer = T0 + timedelta(seconds=1)
    store_batches(store, [tx("a"), tx("b", user_id=2, at=newer), tx("c", user_id=3, at=newer)])
    assert recent(store, 1) == [tx("a")]
    assert recent(store, 2) == [tx("b", user_id=2, at=newer), tx("old", user_id=2)]
    assert f"replaced Redis key {keys.recent(1)}: it held a string" in caplog.text
    assert caplog.text.count("replaced Redis key") == 1
    assert "recent lists: dropped 2 unreadable items" in caplog.text
    assert RecentLists(client, keys).read(3) == [tx("c", user_id=3, at=newer), older]
    assert client.lindex(keys.recent(3), 0).decode() == forged
    assert "skipping an unreadable item (not a transaction object)" in caplog.text


def test_a_stream_batch_is_acknowledged_with_its_redis_writes(store):
    keys, client = store.keys, store.client
    store.group = "store"
    client.xgroup_create(keys.stream, "store", id="0", mkstream=True)
    ids = [client.xadd(keys.stream, {"line": f"1,1.00,1570358269,e{i}"}) for i in range(3)]
    client.xreadgroup("store", "me", {keys.stream: ">"})
    store.store([tx("e0"), tx("e1")], [dead_letter("x", "why")], {0: ids[:2]})
    pending = client.xpending_range(keys.stream, "store", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [ids[2]]
    assert client.llen(keys.dead) == 1


def test_the_stream_is_trimmed_of_what_every_group_acknowledged_and_no_more(store):
    """Two groups read the stream, ours and another reader's. After each of our batches
    every entry that a group still needs (pending on it, or not yet delivered to it) is
    there, and what both acknowledged goes (in whole nodes of the stream)."""
    keys, client = store.keys, store.client
    stream, store.group = keys.stream, "store"
    for group in ("store", "other"):
        client.xgroup_create(stream, group, id="0", mkstream=True)
    ids = [client.xadd(stream, {"line": f"1,1.00,1570358269,e{i}"}) for i in range(1000)]

    def read(group: str, count: int) -> None:
        client.xreadgroup(group, "reader", {stream: ">"}, count=count)

    def batch(acked: slice, needed: int) -> int:
        """Our batch acknowledges `acked`; ids[needed:] are still needed: the length."""
        store.write_redis(Committed(), [], {0: ids[acked]})
        left = [entry_id for entry_id, _ in client.xrange(stream)]
        assert left == ids[len(ids) - len(left) :]  # trimmed from the oldest on
        assert len(left) >= len(ids) - needed, "an entry still needed was trimmed"
        return len(left)

    read("other", 300)
    client.xack(stream, "other", *ids[:100])  # other: 100-299 pending, 300- undelivered
    read("store", 600)
    assert batch(slice(0, 500), needed=100) < 1000  # ours: 500-599 pending
    client.xack(stream, "other", *ids[100:300])  # other: 300- undelivered
    assert batch(slice(500, 550), needed=300) < 900  # ours: 550-599 pending
    read("other", 1000)
    client.xack(stream, "other", *ids[300:])  # other: everything acknowledged
    batch(slice(550, 560), needed=560)  # ours: 560-599 pending, 600- undelivered
    batch(slice(560, 600), needed=600)
    read("store", 1000)
    assert batch(slice(600, 1000), needed=1000) == 0  # both acknowledged everything
    assert [group["lag"] for group in client.xinfo_groups(stream)] == [0, 0]


def test_a_batch_whose_stream_was_deleted_meanwhile_is_written_once(store):
    """Nothing to acknowledge or trim: the script goes on, and counts the batch once."""
    keys, client = store.keys, store.client
    store.group = "store"
    client.xgroup_create(keys.stream, "store", id="0", mkstream=True)
    entry = client.xadd(keys.stream, {"line": "1,1.00,1570358269,gone"})
    client.xreadgroup("store", "me", {keys.stream: ">"})
    client.delete(keys.stream)
    store.store([tx("gone")], entry_ids={0: [entry]})
    assert client.hget(keys.counts(), "stored") == b"1"
    assert not client.exists(keys.stream)


def test_nothing_is_acknowledged_when_the_dead_letters_cannot_be_kept(store, monkeypatch):
    keys, client = store.keys, store.client
    store.group = "store"
    client.xgroup_create(keys.stream, "store", id="0", mkstream=True)
    entry = client.xadd(keys.stream, {"line": "x"})
    client.xreadgroup("store", "me", {keys.stream: ">"})

    def refuse(**_):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(store, "_write_dead", refuse)
    with pytest.raises(redis.ConnectionError):
        store.write_redis(Committed(), [dead_letter("x", "why")], {0: [entry]})
    assert client.xpending(keys.stream, "store")["pending"] == 1


@pytest.mark.parametrize("kind", [*KINDS, "no number"])
def test_derived_keys_of_another_type_are_replaced_by_the_batch_and_logged_once(
    store, kind, monkeypatch, caplog
):
    """The counters, the recent list, the dead letters and their count, each of another
    type (or a counter that is no number): the batch is stored and acknowledged all the
    same, each key replaced, each replacement logged once as an ERROR naming key and type."""
    keys, client = store.keys, store.client
    store.group = "store"
    monkeypatch.setattr("txstream.store.rate_bucket", lambda epoch: 1_700_000_000)
    derived = {
        keys.counts(): "hash",
        keys.rate(1_700_000_000): "string",
        keys.recent(1): "list",
        keys.dead: "list",
        keys.dead_count: "string",
    }
    if kind == "no number":  # counters of their own type that cannot be added to
        client.set(keys.rate(1_700_000_000), "many")
        client.hset(keys.counts(), mapping={"stored": "many", "duplicates": 2**63 - 1})
        retyped = {keys.rate(1_700_000_000): "string", keys.counts(): "hash"}
    else:
        retyped = {key: kind for key, own in derived.items() if own != kind}
        for key in retyped:
            retype(client, key, kind)
    client.xgroup_create(keys.stream, "store", id="0", mkstream=True)
    entries = [client.xadd(keys.stream, {"line": f"e{i}"}) for i in range(3)]
    client.xreadgroup("store", "me", {keys.stream: ">"})

    committed = store.store([tx("a"), tx("a")], [dead_letter("bad", "why")], {0: entries})

    assert [t.txn_id for t in committed.new] == ["a"] and committed.duplicates == 1
    assert client.xpending(keys.stream, "store")["pending"] == 0
    assert recent(store, 1) == [tx("a")]
    assert client.hgetall(keys.counts()) == {b"stored": b"1", b"duplicates": b"1"}
    assert client.get(keys.rate(1_700_000_000)) == b"1"
    assert [json.loads(item)["raw"] for item in client.lrange(keys.dead, 0, -1)] == ["bad"]
    assert client.get(keys.dead_count) == b"1"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert sorted(logged) == sorted(
        f"replaced Redis key {key}: it held a {held} that txstream cannot use"
        for key, held in retyped.items()
    )


def test_latest_sets_of_the_old_layout_move_to_the_lists_once(store, caplog):
    """Layout 1 kept a user's latest transactions in a sorted set `latest:<id>` of JSON
    texts (txn_id first), and before that in lists: both move to the new lists."""
    keys, client = store.keys, store.client
    caplog.set_level("INFO")

    def old_json(t: Transaction) -> str:
        return json.dumps(
            {"txn_id": t.txn_id, "user_id": t.user_id, "amount": f"{t.amount:.2f}",
             "ts": (t.ts - datetime(1970, 1, 1)).total_seconds(),
             "time": t.ts.isoformat(timespec="microseconds") + "Z"},
            separators=(",", ":"),
        )  # fmt: skip

    one = [tx(f"o{i}", at=T0 + timedelta(seconds=i)) for i in range(7)]
    for t in one[:6]:
        client.zadd(keys.old_recent(1), {old_json(t): t.ts.timestamp()})
    client.zadd(keys.old_recent(1), {"unreadable": 1})
    client.rpush(keys.recent(1), old_json(one[6]), old_json(one[0]))  # an older list
    two = tx("t2", user_id=2)
    client.zadd(keys.old_recent(2), {old_json(two): 1})
    client.zadd(f"{keys.prefix}latest:not-a-user", {"x": 1})
    lists = RecentLists(client, keys)
    lists.migrate()
    assert recent(store, 1) == one[:1:-1]
    assert recent(store, 2) == [two]
    assert not client.exists(keys.old_recent(1), keys.old_recent(2))
    assert "moved the latest transactions of 2 users from 2 sorted sets" in caplog.text
    assert "1 unreadable items dropped" in caplog.text
    client.zadd(keys.old_recent(3), {old_json(tx("t3", user_id=3)): 1})
    lists.migrate()  # done once: later sets are not looked for
    assert client.exists(keys.old_recent(3))
