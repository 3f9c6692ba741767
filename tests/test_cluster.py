"""txstream on a real Redis Cluster (3 masters, a replica each, on loopback): the emitter
and three subscribers as processes, 50,000 transactions stored exactly once, with and
without a master and a subscriber killed mid-run; and what WAIT keeps that a failover
would lose.

`make test-cluster` runs these (marker `cluster`); `make test` leaves them out.
"""

from __future__ import annotations

import signal

import pytest

import config
from tests.helpers import TEST_DATABASE_URL
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.testing import (
    CATCH_UP,
    PrivateRedisCluster,
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    emitter_args,
    last_progress,
    stored_transactions,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.transport import StreamSink, StreamSource

pytestmark = [pytest.mark.services, pytest.mark.cluster]

COUNT = 50_000  # transactions per run, as the issue asks
USERS = 1000
SEED = 12
PARTITIONS = 3


def cluster_env(cluster, key_prefix: str, **extra: str) -> dict:
    """The scripts' environment on `cluster`: named by one node's URL, REDIS_CLUSTER unset
    (each process asks the node), three partitions."""
    return stream_env(
        cluster.url,
        TEST_DATABASE_URL,
        key_prefix,
        STREAM_PARTITIONS=str(PARTITIONS),
        CLAIM_IDLE_MS="2000",  # a killed subscriber's entries are taken over after 2 s
        **extra,
    )


def keys_of(env: dict):
    """The Redis names the scripts of `env` use."""
    return config.load({**env, "REDIS_CLUSTER": "1"}).keys


def start_subscribers(run, env: dict, n: int = 3):
    subscribers = [run("sub_and_store.py", env=env) for _ in range(n)]
    for subscriber in subscribers:
        wait_for_log(subscriber, r"reading 3 streams .* waiting for transactions")
    return subscribers


def stop_all(subscribers) -> None:
    for subscriber in subscribers:
        assert subscriber.stop() == 0, subscriber.output


def assert_all_stored_once(engine, cluster, env: dict) -> None:
    """Rows, txn_id set, window and bucket totals = raw rows, recent lists = database."""
    assert_stored_exactly(engine, emitted(COUNT, USERS, SEED))
    with cluster.client() as client:
        assert_recent_lists_match_db(engine, client, keys_of(env))


def test_three_subscribers_store_50000_exactly_once(redis_cluster, mysql_engine, key_prefix, run):
    env = cluster_env(redis_cluster, key_prefix)
    keys = keys_of(env)
    masters = {redis_cluster.node_for_key(stream).port for stream in keys.streams}
    assert len(masters) == PARTITIONS, "the partitions spread over the three masters"

    subscribers = start_subscribers(run, env)
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    assert emitter.wait(CATCH_UP) == 0, emitter.output
    assert "(Redis Cluster)" in emitter.output, "the emitter found the cluster by itself"
    assert f"published {COUNT} transactions" in emitter.output
    wait_until_stored(mysql_engine, COUNT, subscribers)
    stop_all(subscribers)

    assert_all_stored_once(mysql_engine, redis_cluster, env)
    stored = [last_progress(s, "stored") for s in subscribers]
    assert sum(stored) == COUNT
    assert all(stored), f"every subscriber took a share: {stored}"
    assert "CROSSSLOT" not in "".join(s.output for s in [emitter, *subscribers])


def test_a_master_and_a_subscriber_killed_mid_run_lose_nothing(
    redis_cluster, mysql_engine, key_prefix, run
):
    """SIGKILL one master while the emitter sends and the subscribers store (its replica
    takes over), and one subscriber; the killed node starts again and rejoins as a
    replica, as an orchestrator would restart it."""
    env = cluster_env(redis_cluster, key_prefix)
    keys = keys_of(env)
    subscribers = start_subscribers(run, env)
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=4000), env=env)
    wait_until_stored(mysql_engine, COUNT // 5, [emitter, *subscribers])

    victim = redis_cluster.node_for_key(keys.stream_of(0))
    redis_cluster.kill(victim)
    subscribers[0].proc.send_signal(signal.SIGKILL)
    redis_cluster.wait_for_failover(victim)
    # The promoted replica has no replica of its own: the emitter holds its partition.
    wait_for_log(emitter, r"HOLDING partition \d", timeout=30)
    assert emitter.proc.poll() is None, "the emitter finished before the failover"
    redis_cluster.restart(victim)
    redis_cluster.wait_healthy()
    wait_for_log(emitter, r"partition \d has 1 replica\(s\) again", timeout=30)

    assert emitter.wait(CATCH_UP) == 0, emitter.output
    assert f"published {COUNT} transactions" in emitter.output
    survivors = subscribers[1:]
    wait_until_stored(mysql_engine, COUNT, survivors)
    stop_all(survivors)
    assert victim in redis_cluster.replicas(), "the restarted node is a replica now"
    assert_all_stored_once(mysql_engine, redis_cluster, env)
    assert sum(last_progress(s, "claimed") for s in survivors) > 0, "the dead one's entries"


@pytest.mark.parametrize("min_replicas", ["1", "0"])
def test_what_a_failover_drops_is_sent_again_unless_min_replicas_is_0(
    redis_cluster, mysql_engine, key_prefix, run, min_replicas
):
    """A master whose replica is down accepts entries no replica holds; killed before the
    replica is back to take over, they are gone with it. WAIT (MIN_REPLICAS=1) sees them
    unconfirmed, so the emitter keeps them and sends them again to the new master; with
    MIN_REPLICAS=0 it counts them as sent, and they are lost: the risk that setting takes."""
    env = cluster_env(redis_cluster, key_prefix, MIN_REPLICAS=min_replicas, REPLICA_WAIT_MS="200")
    keys = keys_of(env)
    master = redis_cluster.node_for_key(keys.stream_of(0))
    (replica,) = redis_cluster.replicas_of(master)
    redis_cluster.kill(replica)

    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    if min_replicas == "1":
        wait_for_log(emitter, r"HOLDING partition 0", timeout=30)
    else:  # everything counted as sent
        assert emitter.wait(CATCH_UP) == 0, emitter.output
    with redis_cluster.client() as client:
        assert client.xlen(keys.stream_of(0)) > 0, "the master took entries no replica has"
    redis_cluster.kill(master)
    redis_cluster.restart(replica)  # it takes over, without what only its master held
    redis_cluster.wait_for_failover(master)
    redis_cluster.restart(master)  # back as the new master's replica
    redis_cluster.wait_healthy()

    subscribers = start_subscribers(run, env)
    assert emitter.wait(CATCH_UP) == 0, emitter.output
    assert f"published {COUNT} transactions" in emitter.output
    if min_replicas == "1":
        wait_until_stored(mysql_engine, COUNT, subscribers)
        stop_all(subscribers)
        assert_all_stored_once(mysql_engine, redis_cluster, env)
        return
    with redis_cluster.client() as client:
        wait_until(
            lambda: all(
                client.xpending(stream, "store")["pending"] == 0
                and not client.xinfo_groups(stream)[0]["lag"]
                for stream in keys.streams
            ),
            CATCH_UP,
            "the subscribers to have read every entry left",
        )
    stop_all(subscribers)
    stored = {tx.txn_id for tx in stored_transactions(mysql_engine)}
    lost = {tx.txn_id for tx in emitted(COUNT, USERS, SEED)} - stored
    assert lost, "MIN_REPLICAS=0: what only the dead master held is gone"
    assert all(
        keys.partition_of(tx.user_id) == 0
        for tx in emitted(COUNT, USERS, SEED)
        if tx.txn_id in lost
    ), "only from its partition"


def test_a_dead_master_holds_up_no_other_partition(tmp_path, key_prefix):
    """While partition 0's master is down (a long node timeout: not failed over yet), the
    other partitions are read and written as before. redis-py's cluster client asks the
    master of slot 0 (partition 0's) where XREADGROUP's keys are: the subscriber sends it to
    each stream's own master instead."""
    with PrivateRedisCluster(tmp_path / "cluster", node_timeout_ms=30_000) as cluster:
        keys = Keys(key_prefix, stream=key_prefix + "stream", partitions=PARTITIONS, cluster=True)
        with cluster.client() as client:
            source = StreamSource(client, keys.streams, "store", 60_000, 3)
            source.start()
            dead = cluster.node_for_key(keys.stream_of(0))
            assert dead is cluster.master_of_slot(0)
            cluster.kill(dead)
            sink = StreamSink(client, keys.streams, maxlen=0, min_replicas=1)
            for p in (1, 2):
                assert sink.send([f"{p},1.00,1570358269,t{p}"], p) == [1]
            read = wait_until(lambda: source.read(10, 0.1), 10, "entries of the live partitions")
            assert {m.partition for m in read} <= {1, 2}
