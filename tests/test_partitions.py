"""Partitions and Redis Cluster names: the settings, the hash tags, the batch writes on a
cluster (one node holding every slot: what a cluster refuses, it refuses), sharded pub/sub,
and the partition count every process must agree on."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

import config
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL
from txstream.keys import Keys
from txstream.recent import RecentLists
from txstream.store import Store, dead_letter
from txstream.testing import (
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    emitter_args,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.transaction import Transaction
from txstream.transport import StreamSource

T0 = datetime(2019, 10, 6, 6, 0, 0)


def test_one_server_with_one_partition_keeps_the_names_of_before():
    keys = Keys("txstream:")
    assert not keys.tagged
    assert keys.streams == ["transactions"] and keys.channels == ["transactions"]
    assert keys.recent(42) == "txstream:recent:42"
    assert (keys.dead, keys.dead_count) == ("txstream:dead", "txstream:dead:count")
    assert keys.counts() == "txstream:counts" and keys.rate(1790) == "txstream:rate:1790"
    assert keys.token_epoch == "txstream:tokens:epoch"


@pytest.mark.parametrize("partitions, cluster", [(1, True), (3, False), (6, True), (16, True)])
def test_names_used_together_share_a_slot(partitions, cluster):
    keys = Keys("txstream:", partitions=partitions, cluster=cluster)
    assert keys.tagged
    for user_id in range(40):
        p = keys.partition_of(user_id)
        slot = key_slot(keys.stream_of(p).encode())
        assert key_slot(keys.recent(user_id).encode()) == slot
        assert key_slot(keys.channel_of(p).encode()) == slot
        assert key_slot(keys.rate(1790, p).encode()) == key_slot(keys.counts(p).encode()) == slot
    assert key_slot(keys.dead.encode()) == key_slot(keys.dead_count.encode())
    assert key_slot(keys.token_epoch.encode()) == key_slot(keys.rate_count("t", 1, 60).encode())


@pytest.mark.parametrize("partitions", [2, 3, 6, 64, config.MAX_PARTITIONS])
def test_partitions_spread_evenly_over_the_slot_ranges(partitions):
    """A cluster made by `redis-cli --cluster create` gives its masters equal slot ranges:
    partition p's slot is in the p-th of `partitions` equal ranges."""
    keys = Keys("txstream:", partitions=partitions)
    width = REDIS_CLUSTER_HASH_SLOTS / partitions
    for p, stream in enumerate(keys.streams):
        assert int(key_slot(stream.encode()) // width) == p


@pytest.mark.parametrize(
    "env, message",
    [
        ({"REDIS_CLUSTER": "yes"}, "REDIS_CLUSTER must be 1, 0 or unset"),
        ({"STREAM_PARTITIONS": "0"}, "STREAM_PARTITIONS must be a whole number from 1 to 256"),
        ({"STREAM_PARTITIONS": "257"}, "STREAM_PARTITIONS must be a whole number from 1 to 256"),
        ({"MIN_REPLICAS": "-1"}, "MIN_REPLICAS must be a whole number from 0 to 16"),
        ({"REPLICA_WAIT_MS": "0"}, "REPLICA_WAIT_MS must be a whole number > 0"),
        ({"STREAM_PARTITIONS": "2", "KEY_PREFIX": "a{b}:"}, "KEY_PREFIX must not contain {"),
        ({"REDIS_CLUSTER": "1", "STREAM": "s}"}, "STREAM must not contain {"),
    ],
)
def test_bad_cluster_settings_are_refused_clearly(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env)


@pytest.mark.parametrize(
    "env, needed",
    [
        ({}, 0),  # one server: no failover to lose anything in
        ({"REDIS_CLUSTER": "1"}, 1),
        ({"REDIS_CLUSTER": "1", "MIN_REPLICAS": "0"}, 0),  # the risk, taken knowingly
        ({"MIN_REPLICAS": "2"}, 2),
    ],
)
def test_min_replicas_defaults_to_1_on_a_cluster_only(env, needed):
    assert config.load(env).replicas_needed == needed


def tx(txn_id: str, user_id: int, amount: str = "1.00") -> Transaction:
    return Transaction(txn_id, user_id, Decimal(amount), T0)


@pytest.mark.services
def test_a_batch_of_every_partition_is_written_without_crossslot(
    one_node_cluster, sqlite_engine, key_prefix
):
    """Users of three partitions, dead letters and acknowledgements of three streams in one
    batch: each script call keeps to one slot (a single script, as on one server, fails)."""
    keys = Keys(key_prefix, stream=key_prefix + "stream", partitions=3, cluster=True)
    with one_node_cluster.cluster_client() as client:
        ids = {}
        for p, stream in enumerate(keys.streams):
            client.xgroup_create(stream, "store", id="0", mkstream=True)
            ids[p] = [client.xadd(stream, {"line": f"entry {p}"}).decode()]
            client.xreadgroup("store", "me", {stream: ">"})
        store = Store(sqlite_engine, client, keys, 6 * 3600, group="store")
        txns = [tx(f"t{user}", user) for user in range(1, 7)]
        store.store(txns, [dead_letter("bad", "why")], ids)

        for user in range(1, 7):
            assert RecentLists(client, keys).read(user) == [tx(f"t{user}", user)]
        assert client.llen(keys.dead) == 1
        assert [json.loads(d)["raw"] for d in client.lrange(keys.dead, 0, -1)] == ["bad"]
        assert all(client.xpending(s, "store")["pending"] == 0 for s in keys.streams)
        stored = [int(client.hget(keys.counts(p), "stored") or 0) for p in range(3)]
        assert stored == [2, 2, 2]


@pytest.mark.services
def test_a_subscriber_reads_every_partition_in_turn(redis_client, key_prefix):
    keys = Keys(key_prefix, stream=key_prefix + "stream", partitions=3)
    source = StreamSource(redis_client, keys.streams, "store", 60_000, 3)
    source.start()
    for p, stream in enumerate(keys.streams):
        for i in range(3):
            redis_client.xadd(stream, {"line": f"{p}-{i}"})
    first = source.read(4, 0.1)
    assert {m.partition for m in first} == {0, 1}, "no partition waits for another to drain"
    rest = source.read(100, 0.1)
    assert sorted((m.partition, m.raw.decode()) for m in first + rest) == sorted(
        (p, f"{p}-{i}") for p in range(3) for i in range(3)
    )
    assert source.read(100, 0.05) == []


COUNT, USERS, SEED = 3000, 50, 5


@pytest.mark.services
@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_the_scripts_run_on_a_cluster_with_sharded_pubsub_or_streams(
    one_node_cluster, mysql_engine, key_prefix, run, transport
):
    env = stream_env(
        one_node_cluster.url,
        TEST_DATABASE_URL,
        key_prefix,
        TRANSPORT=transport,
        STREAM_PARTITIONS="3",
        CHANNEL=key_prefix + "channel",
        MIN_REPLICAS="0",  # one node: no replica to wait for
    )
    subscriber = run("sub_and_store.py", env=env)
    kind = "sharded pub/sub" if transport == "pubsub" else "group 'store'"
    wait_for_log(subscriber, rf"reading 3 .*{kind}.*waiting for transactions|{kind}")
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    assert emitter.wait(60) == 0, emitter.output
    assert "(Redis Cluster)" in emitter.output
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    assert subscriber.stop() == 0, subscriber.output
    assert_stored_exactly(mysql_engine, emitted(COUNT, USERS, SEED))
    keys = config.load({**env, "REDIS_CLUSTER": "1"}).keys
    with one_node_cluster.cluster_client() as client:
        assert_recent_lists_match_db(mysql_engine, client, keys)


@pytest.mark.services
def test_with_no_replica_the_emitter_holds_what_it_cannot_have_confirmed(
    one_node_cluster, key_prefix, run
):
    """MIN_REPLICAS defaults to 1 on a cluster: a master without replicas holds its
    partitions, says so, and counts nothing as sent."""
    env = stream_env(one_node_cluster.url, TEST_DATABASE_URL, key_prefix, REPLICA_WAIT_MS="50")
    emitter = run("emitter_and_pub.py", "--count", "100", "--rate", "0", "--quiet", env=env)
    wait_for_log(emitter, r"HOLDING partition 0: 0 of the 1 replica\(s\) needed confirmed")
    assert emitter.stop() == 1, emitter.output  # not everything was sent
    assert "published 0 transactions" in emitter.output


@pytest.mark.services
@pytest.mark.parametrize("script", ["emitter_and_pub.py", "sub_and_store.py"])
def test_a_process_with_another_partition_count_refuses_to_start(
    redis_client, key_prefix, run, script
):
    """A user's partition (and recent list) depends on the count: the first process records
    it, and one with another count exits 2, naming both."""
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, STREAM_PARTITIONS="2")
    redis_client.set(Keys(key_prefix).partitions_record, "3")
    flags = ("--max-messages", "1") if script == "sub_and_store.py" else ("--count", "1")
    process = run(script, *flags, env=env)
    assert process.wait(30) == 2, process.output
    assert "STREAM_PARTITIONS is 2, but the emitters and subscribers of this Redis" in (
        process.output
    )
    assert "(key prefix" in process.output and "use 3:" in process.output


@pytest.mark.services
def test_a_partition_record_of_another_type_is_refused_clearly(redis_client, key_prefix, run):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, STREAM_PARTITIONS="2")
    redis_client.rpush(Keys(key_prefix).partitions_record, "not a count")
    emitter = run("emitter_and_pub.py", "--count", "1", "--quiet", env=env)
    assert emitter.wait(30) == 2, emitter.output
    assert "partitions is not a partition count" in emitter.output
    assert "Traceback" not in emitter.output
