"""The stream's read side end to end: the real subscriber on the real Redis and MariaDB.

Entries deleted from the stream before they were stored are counted lost, logged and shown
(metrics, /api/system, the System page); huge entries become dead letters in bounded memory;
a stream key of another type is waited out; an entry handed out too often is still stored
when it can be. (The source's own cases, one by one: tests/test_transport.py.)
"""

from __future__ import annotations

import hashlib
import json
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    make_app,
    metric_samples,
    signed_in_client,
)
from txstream.keys import Keys
from txstream.processes import Script, free_port, wait_until
from txstream.recent import RecentLists
from txstream.store import Store
from txstream.testing import (
    GROUP,
    WINDOW_SECONDS,
    count_rows,
    emitted,
    last_progress,
    pending,
    stored_transactions,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.wire import format_line

pytestmark = pytest.mark.services

USERS, SEED = 20, 8
HUGE_MB, HUGE_COUNT = 25, 10  # the entries: 10 of 25 MB
MAX_RSS_MB = 300


@pytest.fixture
def join(run):
    """Start a stream subscriber (`args`, `env`); return it once it reads the group."""

    def start(env: dict, *args: str) -> Script:
        script = run("sub_and_store.py", "--stats-interval", "0.5", *args, env=env)
        wait_for_log(script, r"reading stream .* as '[^']+' in group")
        return script

    return start


def add(client, stream: str, *lines: str | bytes) -> None:
    """Append wire lines to the stream, as the emitter does (one round trip)."""
    with client.pipeline(transaction=False) as pipe:
        for line in lines:
            pipe.xadd(stream, {"line": line})
        pipe.execute()


def stop(script: Script) -> None:
    """SIGTERM: the subscriber stores what it holds and exits 0."""
    assert script.stop(signal.SIGTERM) == 0, script.output


def system_status(mysql_engine, redis_client, key_prefix: str, stream: str) -> tuple[dict, str]:
    """/api/system and the System page of a web app on the test's servers."""
    web = make_app(mysql_engine, redis_client, key_prefix, TRANSPORT="stream", STREAM=stream)
    client = signed_in_client(web)
    return client.get("/api/system").json, client.get("/system").get_data(as_text=True)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [row for row in status.splitlines() if row.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def test_entries_trimmed_while_pending_on_a_dead_subscriber_are_counted_lost_and_shown(
    run, join, redis_client, mysql_engine, key_prefix
):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    add(redis_client, stream, *map(format_line, emitted(5, USERS, SEED)))
    redis_client.xreadgroup(GROUP, "killed", {stream: ">"})  # held by a subscriber that died
    redis_client.xtrim(stream, maxlen=0)  # and trimmed by someone
    port = free_port()

    subscriber = join(env, "--metrics-port", str(port))

    wait_for_log(
        subscriber,
        rf"ERROR txstream\.transport: LOST: 5 entries of stream '{stream}' were deleted "
        r"\(trimmed\) while pending, before they were stored: \d+-\d+, ",
    )

    def scrape() -> dict:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:  # nosec B310
            return metric_samples(reply.read().decode())

    lost = ("txstream_stream_entries_lost_total", ())
    wait_until(lambda: scrape()[lost] == 5, 10, "the lost entries in the metrics")
    body, page = system_status(mysql_engine, redis_client, key_prefix, stream)
    assert body["stream"]["lost"] == 5 and body["stream"]["partitions"][0]["lost"] == 5
    assert '<td class="num down">5 (deleted before they were stored' in page
    assert pending(redis_client, stream) == 0 and count_rows(mysql_engine) == 0
    assert redis_client.llen(Keys(key_prefix).dead) == 0  # lost, not called dead letters

    add(redis_client, stream, format_line(emitted(6, USERS, SEED)[5]))
    wait_until_stored(mysql_engine, 1, [subscriber])
    stop(subscriber)
    assert last_progress(subscriber, "lost") == 5


def test_entries_appended_with_maxlen_0_while_the_subscriber_is_stopped_are_counted_lost(
    join, redis_client, mysql_engine, key_prefix
):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    txns = emitted(7, USERS, SEED)
    first = join(env)
    add(redis_client, stream, *map(format_line, txns[:3]))
    wait_until_stored(mysql_engine, 3, [first])
    stop(first)
    add(redis_client, stream, *map(format_line, txns[3:6]))
    redis_client.xadd(stream, {"line": "x"}, maxlen=0)  # someone with XADD rights empties it

    restarted = join(env)

    wait_for_log(
        restarted,
        rf"ERROR txstream\.transport: LOST: 4 entries of stream '{stream}' were deleted "
        rf"before group '{GROUP}' read them",
    )
    body, _ = system_status(mysql_engine, redis_client, key_prefix, stream)
    assert body["stream"]["lost"] == 4 and body["stream"]["lag"] == 0
    add(redis_client, stream, format_line(txns[6]))
    wait_until_stored(mysql_engine, 4, [restarted])
    stop(restarted)
    assert last_progress(restarted, "lost") == 4
    assert {tx.txn_id for tx in stored_transactions(mysql_engine)} == {
        tx.txn_id for tx in [*txns[:3], txns[6]]
    }


def test_huge_entries_become_dead_letters_in_bounded_memory(
    join, redis_client, mysql_engine, key_prefix
):
    # Reading and hashing 250 MB takes seconds here: the default CLAIM_IDLE_MS, so that the
    # subscriber does not take its own entries over meanwhile (their letters would be twice).
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, CLAIM_IDLE_MS="30000")
    stream = env["STREAM"]
    size = HUGE_MB * 2**20
    prefix = b"1,2.00,1570358269,"
    huge = [prefix + bytes([65 + i]) * (size - len(prefix)) for i in range(HUGE_COUNT)]
    for line in huge:  # one at a time: each is 25 MB
        redis_client.xadd(stream, {"line": line})
    txns = emitted(3, USERS, SEED)
    add(redis_client, stream, *map(format_line, txns))

    subscriber = join(env)

    dead_key = Keys(key_prefix).dead
    wait_until(lambda: redis_client.llen(dead_key) == HUGE_COUNT, 60, "the dead letters")
    wait_until_stored(mysql_engine, len(txns), [subscriber])
    peak = peak_rss_mb(subscriber.proc.pid)
    assert pending(redis_client, stream) == 0
    stop(subscriber)
    assert peak < MAX_RSS_MB, f"peak RSS {peak:.0f} MB"
    letters = [json.loads(item) for item in redis_client.lrange(dead_key, 0, -1)]
    assert [(d["size"], d["sha256"]) for d in letters] == [
        (size, hashlib.sha256(line).hexdigest()) for line in huge
    ]
    assert all(d["reason"] == "line longer than 1024 bytes" for d in letters)
    assert [d["raw"] for d in letters] == [line[:4096].decode() for line in huge]
    assert {tx.txn_id for tx in stored_transactions(mysql_engine)} == {tx.txn_id for tx in txns}


def test_a_stream_key_of_another_type_is_waited_out_and_the_stream_read_again(
    join, private_redis, mysql_engine, key_prefix
):
    env = stream_env(private_redis.url, TEST_DATABASE_URL, key_prefix)
    stream = env["STREAM"]
    txns = emitted(2, USERS, SEED)
    subscriber = join(env)
    client = private_redis.client()

    def failed_reads() -> int:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("failed_calls", 0))

    try:
        add(client, stream, format_line(txns[0]))
        wait_until_stored(mysql_engine, 1, [subscriber])
        client.set(stream, "gone")  # replaces the stream, its group and pending list
        wrong_type = rf"ERROR txstream\.transport: stream key '{stream}' holds a string, not a"
        wait_for_log(subscriber, wrong_type)
        started = join(env)  # one starting meanwhile waits too
        wait_for_log(started, wrong_type)
        tries = failed_reads()
        wait_until(lambda: failed_reads() >= tries + 4, 30, "reads tried again")
        for script in (subscriber, started):  # said once, not at every try
            assert script.output.count("not a stream") == 1, script.output
            assert script.proc.poll() is None
        assert client.type(stream) == b"string"  # left as it is

        client.delete(stream)
        add(client, stream, format_line(txns[1]))
        wait_until_stored(mysql_engine, 2, [subscriber, started])
        wait_until(lambda: pending(client, stream) == 0, 20, "nothing pending")
        for script in (subscriber, started):
            stop(script)
            assert last_progress(script, "dead") == 0
    finally:
        client.close()


def test_an_entry_delivered_too_often_but_stored_before_is_a_duplicate_not_a_dead_letter(
    join, redis_client, mysql_engine, key_prefix
):
    """Its batch was committed, but the Redis write failed each time: stored, not acked."""
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    stream, keys = env["STREAM"], Keys(key_prefix)
    (tx,) = emitted(1, USERS, SEED)
    Store(mysql_engine, redis_client, keys, WINDOW_SECONDS).commit([tx])
    entry_id = redis_client.xadd(stream, {"line": format_line(tx)})
    redis_client.xgroup_create(stream, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "ghost", {stream: ">"})
    redis_client.xclaim(stream, GROUP, "ghost", 0, [entry_id], idle=60_000, retrycount=10)

    subscriber = join(env)

    wait_until(lambda: pending(redis_client, stream) == 0, 20, "the entry acknowledged")
    assert RecentLists(redis_client, keys).read(tx.user_id) == [tx]
    stop(subscriber)
    assert redis_client.llen(keys.dead) == 0
    assert last_progress(subscriber, "duplicates") == 1
    assert last_progress(subscriber, "dead") == 0
    assert [t.txn_id for t in stored_transactions(mysql_engine)] == [tx.txn_id]
