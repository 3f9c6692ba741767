"""Fault tests of the stream transport: crashes and outages must lose and double nothing.

Each test runs the real scripts with TRANSPORT=stream, breaks something in the middle
(a subscriber killed with SIGKILL, Redis restarted, MariaDB stopped for 10 s, poison
entries, late and shuffled timestamps) and then checks that the database holds exactly
the transactions sent: the same txn_ids, per-user counts and sums, window totals equal
to the raw rows, and nothing left pending in the consumer group.

The emitter's content is reproducible: `FakeTransactions(users, Random(seed))` in this
process yields the txn_ids, users and amounts it sends with `--seed`, at any `--rate`.
Servers that a test stops or restarts are private ones (txstream/testing.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from sqlalchemy import func, select

import models
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL, signed_in_client
from txstream.keys import Keys
from txstream.processes import Script, wait_until
from txstream.recent import RecentLists
from txstream.testing import (
    GROUP,
    WINDOW_SECONDS,
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    emitter_args,
    last_progress,
    pending,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.times import utcnow
from txstream.transaction import Transaction
from txstream.windows import window_totals
from txstream.wire import format_line, parse

pytestmark = pytest.mark.services

COUNT = 20_000  # transactions per run, as issue 3 asks
USERS = 500
SEED = 3
DB_OUTAGE = 10  # seconds MariaDB stays down in the outage test


def pending_txn_ids(client: redis.Redis, stream: str, consumer: bytes) -> list[str]:
    """The txn_ids of the entries delivered to `consumer` and not yet acknowledged."""
    rows = client.xpending_range(stream, GROUP, "-", "+", 1_000_000, consumername=consumer)
    with client.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xrange(stream, row["message_id"], row["message_id"])
        entries = pipe.execute()
    return [parse(fields[b"line"]).txn_id for ((_, fields),) in entries]


def count_stored(engine, txn_ids: list[str]) -> int:
    """How many of `txn_ids` are in the database."""
    t = models.transactions
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(t.c.txn_id.in_(txn_ids)))


def assert_logged(script: Script, pattern: str) -> None:
    """The script's output has a line matching `pattern`."""
    assert re.search(pattern, script.output), f"no {pattern!r} in the output:\n{script.output}"


def assert_nothing_pending(client: redis.Redis, stream: str) -> None:
    """Every entry is acknowledged (the ack follows the commit, so wait for it)."""
    wait_until(lambda: pending(client, stream) == 0, 20, f"no pending entries in {stream}")


def stop_all(*scripts: Script) -> None:
    """SIGTERM each script; each must store its batch, acknowledge it and exit 0."""
    for script in scripts:
        assert script.stop(signal.SIGTERM) == 0, script.output
        assert "stopped on SIGTERM" in script.output


@pytest.fixture
def join(run):
    """Start a stream subscriber and wait until it reads the group; its consumer name."""

    def start(env: dict, *args: str) -> tuple[Script, bytes]:
        script = run("sub_and_store.py", "--stats-interval", "0.5", *args, env=env)
        reading = wait_for_log(script, r"reading stream .* as '([^']+)' in group")
        return script, reading.group(1).encode()

    return start


# --- The private servers themselves -------------------------------------------------------


def test_private_redis_restart_keeps_the_append_only_file(private_redis):
    with private_redis.client() as client:
        client.xadd("s", {"line": "kept"})
        client.set("k", "v")
    private_redis.restart()
    private_redis.kill()  # even a crash after the restart: the fsync-always AOF has it all
    private_redis.start()
    with private_redis.client() as client:
        assert client.get("k") == b"v"
        assert [fields for _, fields in client.xrange("s")] == [{b"line": b"kept"}]


def test_private_mariadb_restart_keeps_a_table(private_mariadb):
    with private_mariadb.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE kept")
        cur.execute("CREATE TABLE kept.t (n INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO kept.t VALUES (7)")
    private_mariadb.restart()
    with private_mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT n FROM kept.t")
        assert cur.fetchall() == ((7,),)


# --- Faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
def test_a_subscriber_killed_mid_run_loses_and_doubles_nothing(
    after_commit, run, join, redis_client, mysql_engine, key_prefix
):
    """SIGKILL a subscriber holding a batch: read but not stored, or stored but not acked."""
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    victim, victim_name = join(env)
    survivor, _ = join(env)
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=4000), env=env)
    wait_until_stored(mysql_engine, 2000, [victim, survivor, emitter])

    # Freeze the victim until it is caught holding unacknowledged entries in the state
    # this case wants (none of them stored yet, or some stored: a batch committed but not
    # acknowledged, while the next one is read), then kill it there.
    def frozen_in_state() -> tuple[int, int] | None:
        victim.proc.send_signal(signal.SIGSTOP)
        os.waitpid(victim.proc.pid, os.WUNTRACED)  # returns once it has stopped
        txn_ids = pending_txn_ids(redis_client, stream, victim_name)
        stored = count_stored(mysql_engine, txn_ids) if txn_ids else 0
        if txn_ids and (stored > 0 if after_commit else stored == 0):
            return len(txn_ids), stored
        victim.proc.send_signal(signal.SIGCONT)
        return None

    state = "after a commit, before its ack" if after_commit else "holding entries not stored"
    left_behind, stored_not_acked = wait_until(frozen_in_state, 20, f"the victim {state}")
    victim.proc.kill()
    assert victim.wait() == -signal.SIGKILL
    restarted, _ = join(env)

    assert emitter.wait() == 0, emitter.output
    assert f"published {COUNT} transactions" in emitter.output
    expected = emitted(COUNT, USERS, SEED)
    wait_until_stored(mysql_engine, len(expected), [survivor, restarted])
    assert_nothing_pending(redis_client, stream)
    stop_all(survivor, restarted)
    assert_stored_exactly(mysql_engine, expected)
    assert pending(redis_client, stream, victim_name) == 0
    taken_over = [
        (last_progress(s, "claimed"), last_progress(s, "duplicates")) for s in (survivor, restarted)
    ]
    assert sum(claimed for claimed, _ in taken_over) >= left_behind
    if after_commit:  # redelivered, found stored already
        assert sum(duplicates for _, duplicates in taken_over) >= stored_not_acked
    assert redis_client.llen(Keys(key_prefix).dead) == 0
    assert_recent_lists_match_db(mysql_engine, redis_client, key_prefix)


def test_a_redis_restart_mid_run_loses_and_doubles_nothing(
    run, join, private_redis, mysql_engine, key_prefix
):
    env = stream_env(private_redis.url, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    subscriber, _ = join(env)
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=3000), env=env)
    wait_until_stored(mysql_engine, 3000, [subscriber, emitter])

    private_redis.stop()
    assert emitter.proc.poll() is None, "the emitter finished before the outage"
    # Both must notice the outage before Redis comes back, or nothing was tested.
    for script in (emitter, subscriber):
        wait_for_log(script, r"redis unavailable")
    private_redis.start()

    assert emitter.wait() == 0, emitter.output
    assert f"published {COUNT} transactions" in emitter.output
    expected = emitted(COUNT, USERS, SEED)
    wait_until_stored(mysql_engine, len(expected), [subscriber])
    with private_redis.client() as client:
        assert_nothing_pending(client, stream)
        stop_all(subscriber)
        assert_stored_exactly(mysql_engine, expected)
        assert client.llen(Keys(key_prefix).dead) == 0
        assert_recent_lists_match_db(mysql_engine, client, key_prefix)
    assert_logged(subscriber, r"redis is back after [0-9.]+ s")


def test_an_idle_subscriber_says_when_redis_is_back(join, private_redis, mysql_engine, key_prefix):
    # Idle, the subscriber meets the outage while reading, not while storing a batch.
    env = stream_env(private_redis.url, TEST_DATABASE_URL, key_prefix)
    subscriber, _ = join(env)
    private_redis.stop()
    wait_for_log(subscriber, r"redis unavailable")
    private_redis.start()
    wait_for_log(subscriber, r"redis is back after [0-9.]+ s")
    tx = emitted(1, USERS, SEED)[0]
    with private_redis.client() as client:
        client.xadd(env["STREAM"], {"line": format_line(tx)})
        wait_until_stored(mysql_engine, 1, [subscriber])
        assert_nothing_pending(client, env["STREAM"])
    stop_all(subscriber)
    assert_stored_exactly(mysql_engine, [tx])


def test_a_database_outage_mid_run_loses_and_doubles_nothing(
    run, join, redis_client, private_mariadb, key_prefix
):
    env = stream_env(TEST_REDIS_URL, private_mariadb.url, key_prefix)
    stream = env["STREAM"]
    engine = models.make_engine(private_mariadb.url)
    try:
        models.create_schema(engine)
        subscriber, _ = join(env)
        emitter = run(*emitter_args(COUNT, USERS, SEED, rate=2000), env=env)
        wait_until_stored(engine, 3000, [subscriber, emitter])

        private_mariadb.stop()
        time.sleep(DB_OUTAGE)  # the outage itself: the only fixed wait here
        assert_logged(subscriber, r"database unavailable")
        private_mariadb.start()

        assert emitter.wait() == 0, emitter.output
        expected = emitted(COUNT, USERS, SEED)
        wait_until_stored(engine, len(expected), [subscriber])
        assert_nothing_pending(redis_client, stream)
        stop_all(subscriber)
        assert_stored_exactly(engine, expected)
        assert redis_client.llen(Keys(key_prefix).dead) == 0
        assert_recent_lists_match_db(engine, redis_client, key_prefix)
    finally:
        engine.dispose()
    assert_logged(subscriber, r"database is back after [0-9.]+ s")


def test_poison_entries_become_dead_letters_and_are_acknowledged(
    join, redis_client, mysql_engine, key_prefix
):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    # An entry handed out 11 times already (read once by "ghost", then marked so): a good
    # transaction all the same, so it is stored (tried alone), not called a dead letter.
    ghost_line = "7,10.00,1570358269.5,ghost-entry"
    ghost_id = redis_client.xadd(stream, {"line": ghost_line})
    redis_client.xgroup_create(stream, GROUP, id="0")
    assert redis_client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=1)
    redis_client.xclaim(stream, GROUP, "ghost", 0, [ghost_id], idle=60_000, retrycount=10)

    good = list(emitted(300, 50, 4))
    poison = [
        ({"line": b""}, ""),
        ({"line": b"1,2"}, "1,2"),
        ({"line": b"1,abc,1570358269,poison-amount"}, "1,abc,1570358269,poison-amount"),
        ({"line": b"\xff\xfe,10,1570358269"}, "\\xff\\xfe,10,1570358269"),
        ({"other": b"1,10,1570358269,no-line-field"}, None),
    ]
    entries = [{"line": format_line(tx)} for tx in good]
    entries.append(dict(entries[0]))  # the same transaction twice: stored once
    entries += [fields for fields, _ in poison]
    random.Random(5).shuffle(entries)
    with redis_client.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(stream, fields)
        pipe.execute()

    subscriber, _ = join(env)
    dead_key = Keys(key_prefix).dead
    wait_until_stored(mysql_engine, len(good) + 1, [subscriber])
    wait_until(lambda: redis_client.llen(dead_key) >= len(poison), 20, "the dead letters")
    assert_nothing_pending(redis_client, stream)
    stop_all(subscriber)

    assert_stored_exactly(mysql_engine, [*good, parse(ghost_line)])
    dead = {d["raw"]: d for d in map(json.loads, redis_client.lrange(dead_key, 0, -1))}
    assert len(dead) == len(poison)
    for _, raw in poison:
        if raw is not None:
            assert dead.pop(raw)["reason"]
    ((raw, letter),) = dead.items()  # the entry without a `line` field
    assert "no-line-field" in raw and re.search(r"(?i)\bline\b", letter["reason"])
    assert last_progress(subscriber, "dead") == len(poison)
    assert last_progress(subscriber, "duplicates") == 1
    assert_logged(
        subscriber, r"entry \S+ of partition 0 was delivered 11 times .*: storing it alone"
    )


def test_late_and_shuffled_transactions_land_in_their_own_windows(
    join, redis_client, mysql_engine, key_prefix
):
    env = stream_env(
        TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, BATCH_SIZE="5", BATCH_INTERVAL_MS="20"
    )
    stream = env["STREAM"]
    rng = random.Random(6)
    now = utcnow()
    txns = []
    for user_id in range(1, 5):
        for i in range(50):
            age = timedelta(seconds=rng.uniform(0, 4 * 86400), microseconds=rng.randrange(10**6))
            amount = Decimal(rng.randrange(-5000, 500_000)).scaleb(-2)
            txns.append(Transaction(f"late-{user_id}-{i:02d}", user_id, amount, now - age))
    # Ties at the newest instant: the latest 5 are then decided by txn_id.
    txns += [Transaction(f"tie-{c}", 1, Decimal("1.00"), now) for c in "gfedcba"]
    lines = [format_line(tx) for tx in txns]
    lines += rng.sample(lines, 20)  # some sent twice
    rng.shuffle(lines)

    first, _ = join(env)
    second, _ = join(env)
    with redis_client.pipeline(transaction=False) as pipe:
        for line in lines:
            pipe.xadd(stream, {"line": line})
        pipe.execute()

    wait_until_stored(mysql_engine, len(txns), [first, second])
    assert_nothing_pending(redis_client, stream)
    stop_all(first, second)
    assert_stored_exactly(mysql_engine, txns, with_ts=True)
    assert last_progress(first, "stored") > 0 and last_progress(second, "stored") > 0
    assert len({tx.window_start for tx in window_totals(txns, WINDOW_SECONDS)}) > 10
    assert_recent_lists_match_db(mysql_engine, redis_client, key_prefix)
    newest = [tx.txn_id for tx in RecentLists(redis_client, Keys(key_prefix)).read(1)]
    assert newest == ["tie-g", "tie-f", "tie-e", "tie-d", "tie-c"]


def test_the_web_app_reads_again_after_a_database_restart(private_mariadb, fake_redis):
    """Its engine does not ping connections before use: the first read on a connection
    the restart killed must be repeated on a new one, not fail the request."""
    from app import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": private_mariadb.url, "REDIS": fake_redis})
    engine = app.config["ENGINE"]
    try:
        models.create_schema(engine)
        client = signed_in_client(app)
        assert client.get("/api/users/1/sum").status_code == 200  # a pooled connection now
        private_mariadb.restart()
        for path in ("/api/users/1/sum", "/api/users/1/transactions", "/users/1", "/healthz"):
            assert client.get(path).status_code == 200, path
            private_mariadb.restart()
    finally:
        engine.dispose()
