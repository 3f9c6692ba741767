"""The private Redis Cluster the cluster tests, the benchmarks and `make cluster-demo` run on
(txstream.testing.PrivateRedisCluster): it forms, it fails over, a killed node rejoins."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import MovedError

from txstream.testing import CLUSTER_SLOTS, PrivateRedis

pytestmark = [pytest.mark.services, pytest.mark.cluster]


def keys_on(slots: set[int], count: int) -> list[str]:
    """`count` key names in one hash slot of `slots` (one hash tag: MGET may read them)."""
    tag = next(f"{{t{i}}}" for i in range(100_000) if key_slot(f"{{t{i}}}".encode()) in slots)
    return [f"{tag}:{n}" for n in range(count)]


def role(node: PrivateRedis) -> list:
    """ROLE, as the node answers it."""
    with node.client() as client:
        return client.execute_command("ROLE")


def test_cluster_has_three_masters_each_with_an_online_replica_covering_every_slot(
    redis_cluster,
):
    cluster = redis_cluster
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert set(masters) | set(replicas) == set(cluster.nodes)
    for master in masters:
        with master.client() as client:
            replication = client.info("replication")
        assert replication["connected_slaves"] == 1
        assert replication["slave0"]["state"] == "online"
        (replica,) = cluster.replicas_of(master)
        assert role(replica)[:4] == [b"slave", b"127.0.0.1", master.port, b"connected"]
        assert replica.port == replication["slave0"]["port"]
    served = [cluster.served_slots(master) for master in masters]
    assert sum(map(len, served)) == CLUSTER_SLOTS  # none served twice...
    assert set().union(*served) == set(range(CLUSTER_SLOTS))  # ...and none left out
    for master, slots in zip(masters, served, strict=True):
        assert {cluster.master_of_slot(slot) for slot in (min(slots), max(slots))} == {master}
    for node in cluster.nodes:
        with node.client() as client:
            assert client.execute_command("CLUSTER INFO")["cluster_state"] == "ok"

    cluster.stop()  # as the fixture does at the end: nothing runs, nothing answers

    assert not any(node.running for node in cluster.nodes)
    for node in cluster.nodes:
        with pytest.raises(redis.ConnectionError), node.client() as client:
            client.ping()


def test_a_key_set_through_the_cluster_client_is_on_the_master_of_its_slot(redis_cluster):
    keys = [f"harness:{n}" for n in range(30)]  # over many slots, so over every master
    with redis_cluster.client() as client:
        for key in keys:
            client.set(key, f"value of {key}")
        assert [client.get(key) for key in keys] == [f"value of {k}".encode() for k in keys]
    owners = {key: redis_cluster.node_for_key(key) for key in keys}
    assert set(owners.values()) == set(redis_cluster.masters())
    for key, owner in owners.items():
        with owner.client() as client:
            assert client.get(key) == f"value of {key}".encode()
        other = next(m for m in redis_cluster.masters() if m is not owner)
        with other.client() as client, pytest.raises(MovedError) as moved:
            client.get(key)
        assert moved.value.node_addr == ("127.0.0.1", owner.port)  # the others send it there


def test_killed_master_fails_over_to_its_replica_keeping_what_wait_confirmed_then_rejoins(
    redis_cluster,
):
    victim = redis_cluster.masters()[0]
    (replica,) = redis_cluster.replicas_of(victim)
    served = redis_cluster.served_slots(victim)
    keys = keys_on(served, 200)
    values = [f"value {n}".encode() for n in range(len(keys))]
    with victim.client() as client, client.pipeline(transaction=False) as pipe:
        for key, value in zip(keys, values, strict=True):
            pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 5000)  # on the same connection as the writes
        assert pipe.execute()[-1] == 1  # the replica holds every one of them

    redis_cluster.kill(victim)
    promoted = redis_cluster.wait_for_failover(victim)

    assert promoted is replica
    assert role(promoted)[0] == b"master"
    assert redis_cluster.served_slots(promoted) == served
    with promoted.client() as client:
        assert client.mget(keys) == values
    with redis_cluster.client() as client:  # a client that starts now finds the new master
        assert client.mget(keys) == values

    redis_cluster.restart(victim)
    redis_cluster.wait_healthy()

    assert role(victim)[:4] == [b"slave", b"127.0.0.1", promoted.port, b"connected"]
    assert redis_cluster.served_slots(victim) == set()
    with victim.client(single_connection_client=True) as client:
        client.execute_command("READONLY")  # a replica answers reads of its master's slots
        assert client.mget(keys) == values
