"""Redis's derived state comes back from the database: after Redis loses its data, the
subscribers rebuild each user's recent list and the stored count, by themselves, and the
web app answers from the database meanwhile; `flask --app app rebuild-redis` does it now."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL, make_app, signed_in_client
from txstream import live, rebuild_redis
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.rebuild_redis import ALL, LostLock, RedisRebuild
from txstream.recent import RECENT_SIZE
from txstream.store import Store
from txstream.testing import (
    assert_recent_lists_match_db,
    count_rows,
    emitter_args,
    stored_transactions,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.times import parse_time, utcnow
from txstream.transaction import Transaction, to_json

NOW = datetime(2026, 11, 29, 14, 0, 0)
WINDOW_SECONDS = 6 * 3600


def made_up(users: int, per_user: int, prefix: str = "t") -> list[Transaction]:
    """`per_user` transactions of each of users 1..`users`, with ties in time."""
    return [
        Transaction(f"{prefix}{u}-{k}", u, Decimal(f"{u}.{k:02d}"), NOW - timedelta(seconds=k // 2))
        for u in range(1, users + 1)
        for k in range(per_user)
    ]


def newest_in_db(engine, user_id: int) -> list[dict]:
    """The user's RECENT_SIZE newest stored transactions as the API shows them."""
    theirs = [tx for tx in stored_transactions(engine) if tx.user_id == user_id]
    return [to_json(tx) for tx in sorted(theirs, key=lambda tx: (tx.ts, tx.txn_id))][::-1][
        :RECENT_SIZE
    ]


def lose_redis(client, keys: Keys) -> None:
    """What FLUSHDB does to this test's keys (the test Redis is shared: only those)."""
    names = list(client.scan_iter(match=keys.prefix + "*"))
    if names:
        client.delete(*names)


def assert_recent_answers_right(web, engine, users) -> None:
    for user in users:
        body = web.get(f"/api/users/{user}/recent").get_json()
        assert body["items"] == newest_in_db(engine, user), f"user {user}"


def web_client(engine, client, keys: Keys):
    return signed_in_client(
        make_app(engine, client, keys.prefix, CLOCK=lambda: NOW, RATE_LIMIT="100000/minute")
    )


def test_the_lists_and_counts_come_back_after_a_loss(backend, key_prefix):
    engine, client = backend
    keys = Keys(key_prefix)
    store = Store(engine, client, keys, WINDOW_SECONDS)
    rebuild = RedisRebuild(engine, client, keys, "subscriber-a")
    rebuild.check()  # a new Redis and database: nothing to rebuild, counts of all time
    store.store(made_up(12, 9))
    store.store(made_up(3, 2))  # 6 duplicates
    web = web_client(engine, client, keys)
    before_loss = utcnow()

    lose_redis(client, keys)
    # Until a subscriber rebuilds it, the web app reads the database.
    assert_recent_answers_right(web, engine, range(1, 13))
    assert web.get("/api/live").get_json()["counts"]["rebuilding"] is True
    rebuilt = rebuild.check()

    assert rebuilt.partitions == [0] and rebuilt.rows == 12 * 9 and rebuilt.users == 12
    assert_recent_lists_match_db(engine, client, keys)
    assert_recent_answers_right(web, engine, range(1, 13))
    counts = web.get("/api/live").get_json()["counts"]
    assert (counts["stored"], counts["duplicates"], counts["rebuilding"]) == (108, 0, False)
    for since in counts["since"].values():  # what only Redis knew counts from the loss
        assert before_loss <= parse_time(since) <= utcnow()
    assert rebuild.check() is None  # complete: nothing more to do
    store.store(made_up(3, 2))
    assert web.get("/api/live").get_json()["counts"]["duplicates"] == 6


def test_nothing_wrong_is_served_while_a_rebuild_runs(backend, key_prefix, monkeypatch):
    engine, client = backend
    keys = Keys(key_prefix)
    store = Store(engine, client, keys, WINDOW_SECONDS)
    store.store(made_up(9, 7))
    web = web_client(engine, client, keys)
    monkeypatch.setattr(rebuild_redis, "USERS_PER_READ", 3)
    chunk_done, go_on = threading.Event(), threading.Event()

    def pause(users: int) -> None:
        chunk_done.set()
        assert go_on.wait(30)

    lose_redis(client, keys)
    rebuild = RedisRebuild(engine, client, keys, "subscriber-a")
    running = threading.Thread(target=rebuild.rebuild, kwargs={"done": pause})
    running.start()
    try:
        assert chunk_done.wait(30)  # users 1-3 merged, 4-9 not yet
        assert client.llen(keys.recent(1)) == RECENT_SIZE and not client.exists(keys.recent(5))
        # A subscriber stores on meanwhile: user 5's list holds only the new one.
        (new,) = store.store([Transaction("late", 5, Decimal("1.00"), NOW + timedelta(1))]).new
        assert client.llen(keys.recent(5)) == 1
        assert_recent_answers_right(web, engine, range(1, 10))
        page = web.get("/users/5").get_data(as_text=True)
        recent = page.split(">Recent 5</h2>")[1].split("<h2")[0]
        assert all(item["txn_id"] in recent for item in newest_in_db(engine, 5))
        assert web.get("/api/live").get_json()["counts"]["rebuilding"] is True
    finally:
        go_on.set()
        running.join(30)
    assert_recent_lists_match_db(engine, client, keys)
    assert web.get("/api/users/5/recent").get_json()["items"][0] == to_json(new)
    counts = web.get("/api/live").get_json()["counts"]
    assert (counts["stored"], counts["rebuilding"]) == (9 * 7 + 1, False)


def test_a_loss_during_a_rebuild_stops_it_and_the_next_check_redoes_it(
    backend, key_prefix, monkeypatch
):
    engine, client = backend
    keys = Keys(key_prefix)
    Store(engine, client, keys, WINDOW_SECONDS).store(made_up(6, 6))
    monkeypatch.setattr(rebuild_redis, "USERS_PER_READ", 2)
    rebuild = RedisRebuild(engine, client, keys, "subscriber-a")
    lose_redis(client, keys)

    with pytest.raises(LostLock):
        rebuild.rebuild(done=lambda users: lose_redis(client, keys))

    assert not client.exists(keys.derived(0), keys.derived_lock(0))
    assert rebuild.check().users == 6
    assert_recent_lists_match_db(engine, client, keys)


def test_one_subscriber_rebuilds_and_another_takes_over_when_it_dies(
    backend, key_prefix, monkeypatch
):
    engine, client = backend
    keys = Keys(key_prefix)
    Store(engine, client, keys, WINDOW_SECONDS).store(made_up(4, 6))
    lose_redis(client, keys)
    monkeypatch.setattr(rebuild_redis, "LOCK_MS", 300)
    dying, other = (RedisRebuild(engine, client, keys, name) for name in ("dies", "other"))

    def killed(users: int) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):  # after its first chunk
        dying.rebuild(done=killed)
    client.set(keys.derived_lock(0), "dies", px=300)  # killed, it could not let go of it

    assert other.check().held == {0: "dies"}  # not while the lock is held
    assert not client.exists(keys.derived(0))
    wait_until(lambda: other.check().partitions == [0], 10, "the other taking over")
    assert client.exists(keys.derived(0)) and not client.exists(keys.derived_lock(0))
    assert_recent_lists_match_db(engine, client, keys)


def test_only_the_partition_that_lost_its_data_is_rebuilt(backend, key_prefix):
    engine, client = backend
    keys = Keys(key_prefix, partitions=3)  # tagged: each partition in a slot of its own
    store = Store(engine, client, keys, WINDOW_SECONDS)
    rebuild = RedisRebuild(engine, client, keys, "subscriber-a")
    rebuild.check()
    store.store(made_up(9, 6))
    store.store(made_up(9, 6))  # duplicates, counted in partition 0
    tag = keys.tag(1)
    # The master of partition 1's slot loses its data: only that slot's keys.
    lost = [k for k in client.scan_iter(match=f"{key_prefix}*") if tag.encode() in k]
    client.delete(*lost)

    rebuilt = rebuild.check()

    assert rebuilt.partitions == [1] and rebuilt.users == 3 and rebuilt.rows == 18
    assert_recent_lists_match_db(engine, client, keys)
    assert [client.get(keys.derived(p)) for p in (0, 2)] == [ALL.encode()] * 2
    counts = live.counts(client, keys)
    assert (counts["stored"], counts["duplicates"]) == (54, 54)
    assert counts["since"]["duplicates"] is not None  # partition 1's count from the loss
    assert counts["since"]["dead_letters"] is None  # the dead letters' slot lost nothing


def test_the_rebuild_redis_command(backend, key_prefix):
    engine, client = backend
    keys = Keys(key_prefix)
    store = Store(engine, client, keys, WINDOW_SECONDS)
    RedisRebuild(engine, client, keys, "subscriber-a").check()
    store.store(made_up(5, 4))
    # Redis restored from an older snapshot: its marker is there, its lists lack these.
    store.commit(made_up(5, 8, prefix="later"))
    web_app = make_app(engine, client, key_prefix)

    result = web_app.test_cli_runner().invoke(args=["rebuild-redis"])

    assert result.exit_code == 0, result.output
    assert "Rebuilding the recent lists of 5 users and the stored count" in result.output
    assert "users" in result.output  # the progress bar
    assert "Done: the recent lists of 5 users, 60 rows counted (partitions 0)" in result.output
    assert_recent_lists_match_db(engine, client, keys)
    assert int(client.hget(keys.counts(), "stored")) == 60


def test_the_rebuild_redis_command_leaves_a_partition_another_rebuilds(backend, key_prefix):
    engine, client = backend
    keys = Keys(key_prefix)
    client.set(keys.derived_lock(0), "subscriber-b", px=30_000)

    result = make_app(engine, client, key_prefix).test_cli_runner().invoke(args=["rebuild-redis"])

    assert result.exit_code == 1
    assert "partitions being rebuilt by another now, left to it: 0 by subscriber-b" in (
        result.output
    )


@pytest.mark.services
def test_a_subscriber_rebuilds_what_redis_lost_without_new_traffic(
    run, redis_client, mysql_engine, key_prefix
):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    subscriber = run("sub_and_store.py", env=env)
    wait_for_log(subscriber, r"reading stream")
    emitter = run(*emitter_args(2000, 40, seed=19, rate=5000), env=env)
    assert emitter.wait() == 0, emitter.output
    wait_until_stored(mysql_engine, 2000, [subscriber])
    keys = Keys(key_prefix)
    wait_until(lambda: redis_client.exists(keys.derived(0)), 20, "the marker")
    web = web_client(mysql_engine, redis_client, keys)
    assert web.get("/api/live").get_json()["counts"]["stored"] == 2000

    lose_redis(redis_client, keys)  # everything: the stream, its group, lists, counters

    def rebuilt() -> bool:
        try:
            assert_recent_lists_match_db(mysql_engine, redis_client, keys)
        except AssertionError:
            return False
        return True

    wait_until(rebuilt, 60, "every recent list rebuilt")
    assert_recent_answers_right(web, mysql_engine, range(1, 41))
    counts = web.get("/api/live").get_json()["counts"]
    assert (counts["stored"], counts["rebuilding"]) == (count_rows(mysql_engine), False)
    assert counts["since"]["duplicates"] and counts["since"]["dead_letters"]
    wait_for_log(subscriber, r"rebuilt Redis's recent lists of 40 users")
