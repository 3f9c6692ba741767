"""The stream's cap: nothing unread is ever trimmed.

The emitter never trims the stream: at STREAM_MAXLEN entries (all unacknowledged, as the
subscribers trim only what every consumer group has acknowledged) it waits for room,
warning once, per partition. The subscribers' batch script trims the rest. A stream key
of another type makes the emitter say so and retry, keeping its lines.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

import config
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL
from txstream.processes import wait_until
from txstream.testing import (
    assert_stored_exactly,
    emitted,
    emitter_args,
    stream_env,
    wait_for_log,
    wait_until_stored,
)

pytestmark = pytest.mark.services

COUNT, USERS, SEED = 1000, 50, 9
WAITING = r"WAITING for the subscribers: stream '([^']+)' holds (\d+) entries"


def servers(request, kind: str, key_prefix: str):
    """(a client, the scripts' environment, the streams) of one server or a one-node
    cluster with three partitions."""
    if kind == "one server":
        client = request.getfixturevalue("redis_client")
        env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    else:
        cluster = request.getfixturevalue("one_node_cluster")
        client = cluster.cluster_client()
        request.addfinalizer(client.close)
        env = stream_env(
            cluster.url, TEST_DATABASE_URL, key_prefix, STREAM_PARTITIONS="3", MIN_REPLICAS="0"
        )
    keys = config.load({**env, "REDIS_CLUSTER": "0" if kind == "one server" else "1"}).keys
    return client, env, keys.streams


@pytest.mark.parametrize("kind", ["one server", "cluster"])
def test_the_emitter_waits_for_the_subscribers_instead_of_trimming_unread_entries(
    request, kind, mysql_engine, key_prefix, run
):
    """No subscriber: the emitter appends up to STREAM_MAXLEN to each partition's stream,
    then waits, saying so once per full partition, while the others take all of theirs.
    A subscriber then stores every transaction, and trims the stream behind it."""
    client, env, streams = servers(request, kind, key_prefix)
    shares = Counter(tx.user_id % len(streams) for tx in emitted(COUNT, USERS, SEED))
    maxlen = 100 if len(streams) == 1 else min(shares.values())  # the smallest one fits
    full = {streams[p] for p, share in shares.items() if share > maxlen}
    env["STREAM_MAXLEN"] = str(maxlen)
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    for _ in full:
        wait_for_log(emitter, WAITING)
    wait_until(lambda: sum(map(client.xlen, streams)) == len(streams) * maxlen, 10, "appends")
    warned = re.findall(WAITING, emitter.output)
    assert sorted(warned) == sorted((stream, str(maxlen)) for stream in full)
    assert emitter.proc.poll() is None, emitter.output  # it waits

    subscriber = run("sub_and_store.py", env=env)
    assert emitter.wait() == 0, emitter.output
    assert f"published {COUNT} transactions" in emitter.output
    assert "0 not sent" in emitter.output
    assert re.findall(WAITING, emitter.output) == warned  # once per partition
    assert len(re.findall(r"stream has room again", emitter.output)) == len(full)
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    assert subscriber.stop() == 0, subscriber.output
    assert_stored_exactly(mysql_engine, emitted(COUNT, USERS, SEED))
    for stream in streams:
        (group,) = client.xinfo_groups(stream)
        assert (group["pending"], group["lag"]) == (0, 0)
        assert client.xlen(stream) == 0  # everything was acknowledged: trimmed


def test_a_stream_key_of_another_type_holds_the_emitter_until_it_is_a_stream(
    private_redis, key_prefix, run
):
    """`SET <stream> gone`: the emitter names the key and its type, once, keeps its lines
    and retries with backoff; once the key is deleted it sends them all."""
    env = stream_env(private_redis.url, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    admin = private_redis.client()
    admin.set(stream, "gone")
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    wait_for_log(emitter, rf"ERROR .*the stream key '{stream}' holds a string, not a stream")

    def tries() -> int:
        return admin.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)

    wait_until(lambda: tries() >= 4, 10, "the emitter's retries")
    assert emitter.proc.poll() is None, emitter.output
    assert admin.get(stream) == b"gone"  # left alone
    admin.delete(stream)
    assert emitter.wait() == 0, emitter.output
    assert "0 not sent" in emitter.output
    assert emitter.output.count("holds a string, not a stream") == 1
    assert "partition 0 has its stream again" in emitter.output
    assert admin.xlen(stream) == COUNT
    assert "Traceback" not in emitter.output
    admin.close()


def test_a_stopped_emitter_counts_what_a_full_stream_did_not_take(redis_client, key_prefix, run):
    """Past --max-pending the oldest are dropped, loudly, as while Redis is down; stopped
    while it waits, the emitter exits 1 naming how many it did not send."""
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, STREAM_MAXLEN="100")
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), "--max-pending", "600", env=env)
    wait_for_log(emitter, WAITING)
    assert emitter.stop() == 1, emitter.output
    assert "transactions DROPPED: more than 600 waiting to be sent" in emitter.output
    assert "partition 0: stream" in emitter.output and "its 500 transactions are not sent" in (
        emitter.output
    )
    assert "published 100 transactions" in emitter.output
    assert f"{COUNT - 100} not sent" in emitter.output
    assert redis_client.xlen(env["STREAM"]) == 100
    assert "Traceback" not in emitter.output
