"""The transports: stream sink and source (group, claims, poison, lost, oversized and
wrong-type entries) on the real Redis (the source reads through Lua scripts, whose replies
fakeredis shapes otherwise), pub/sub on fakeredis."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
import redis

from tests.helpers import KINDS, TEST_REDIS_URL, retype
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.transport import (
    LINE_CAP,
    SHOWN_IDS,
    NotAStream,
    PubSubSink,
    PubSubSource,
    StreamFull,
    StreamSink,
    StreamSource,
)

STREAM = "test-stream"


@pytest.fixture
def stream(key_prefix):
    """This test's stream, under its key prefix (deleted afterwards)."""
    return key_prefix + "stream"


@pytest.fixture
def counts(key_prefix):
    """The counts hash of this test's prefix (one partition)."""
    return Keys(key_prefix).counts()


def new_source(client, stream, counts, claim_idle_ms=50):
    """A started stream consumer of group `store` (a subscriber starting, or restarted)."""
    source = StreamSource(client, stream, "store", claim_idle_ms, 3, [counts])
    source.start()
    return source


@pytest.fixture
def source(redis_client, stream, counts):
    """A stream consumer of group `store` that takes over entries idle for 50 ms."""
    return new_source(redis_client, stream, counts)


def read_all(source, timeout=0.01):
    return source.read(100, timeout)


def lost_in_redis(client, counts) -> int:
    return int(client.hget(counts, "lost") or 0)


@pytest.mark.services
def test_a_new_group_reads_the_stream_from_its_start(redis_client, stream, counts):
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269", "2,3.00,1570358270"])
    source = new_source(redis_client, stream, counts, claim_idle_ms=60_000)
    source.start()  # the group exists now: no error
    messages = read_all(source)
    assert [m.raw for m in messages] == [b"1,2.00,1570358269", b"2,3.00,1570358270"]
    assert all(m.problem is None and m.whole is None for m in messages)


@pytest.mark.services
def test_a_line_without_txn_id_gets_one_fixed_by_its_entry_id(redis_client, stream, source):
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269"])
    (message,) = read_all(source)
    assert message.missing_id == f"stream-{message.entry_id}"


@pytest.mark.services
def test_entries_of_a_stopped_consumer_are_taken_over_once_idle(redis_client, stream, source):
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269", "2,3.00,1570358270"])
    redis_client.xreadgroup("store", "crashed", {stream: ">"}, count=10)  # read, never acked
    taken = wait_until(lambda: read_all(source), 5, "the idle entries to be taken over")
    assert [m.raw for m in taken] == [b"1,2.00,1570358269", b"2,3.00,1570358270"]
    assert source.claimed == 2 and source.lost == 0
    owners = redis_client.xpending_range(stream, "store", min="-", max="+", count=10)
    assert {p["consumer"].decode() for p in owners} == {source.name}


@pytest.mark.services
def test_an_entry_delivered_too_often_is_flagged_to_be_tried_alone(redis_client, stream, source):
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269"])
    ((_, ((entry_id, _),)),) = redis_client.xreadgroup("store", "ghost", {stream: ">"})
    redis_client.xclaim(stream, "store", "ghost", 0, [entry_id], retrycount=10)
    (message,) = wait_until(lambda: read_all(source), 5, "the entry to be taken over")
    assert message.over_delivered == 11 and message.problem is None  # MAX_DELIVERIES 3
    assert message.raw == b"1,2.00,1570358269"


@pytest.mark.services
def test_an_entry_without_a_line_field_is_flagged_with_its_fields(redis_client, stream, source):
    redis_client.xadd(stream, {"amount": "12"})
    (message,) = read_all(source)
    assert message.problem == "stream entry has no 'line' field"
    assert message.raw == b"{'amount': b'12'}"


def test_a_full_stream_takes_what_fits_trims_nothing_and_says_so(fake_redis):
    """What a stream holds is unacknowledged (the subscribers trim the rest): at `maxlen`
    the sink appends no more, and names how many it took."""
    sink = StreamSink(fake_redis, STREAM, maxlen=10)
    first = fake_redis.xadd(STREAM, {"line": "1,1.00,1570358269"})
    with pytest.raises(StreamFull) as full:
        sink.send([f"1,{i}.00,1570358269" for i in range(25)])
    assert (full.value.sent, full.value.length, full.value.maxlen) == (9, 10, 10)
    assert f"stream {STREAM!r} holds 10 entries" in str(full.value)
    with pytest.raises(StreamFull) as full:
        sink.send(["1,2.00,1570358269"])
    assert full.value.sent == 0
    entries = fake_redis.xrange(STREAM)
    assert len(entries) == 10 and entries[0][0] == first  # nothing trimmed
    assert entries[-1][1] == {b"line": b"1,8.00,1570358269"}  # the first 9, in order


def test_a_stream_key_of_another_type_is_named_and_left_alone(fake_redis):
    fake_redis.set(STREAM, "gone")
    with pytest.raises(NotAStream, match=f"the stream key '{STREAM}' holds a string"):
        StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269"])
    assert fake_redis.get(STREAM) == b"gone"


@pytest.mark.services
def test_entries_trimmed_while_pending_on_a_dead_consumer_are_lost_counted_and_logged(
    redis_client, stream, counts, source, caplog
):
    ids = [redis_client.xadd(stream, {"line": f"1,{i}.00,1570358269"}) for i in range(12)]
    redis_client.xreadgroup("store", "crashed", {stream: ">"})  # pending there...
    redis_client.xtrim(stream, maxlen=0)  # ...and trimmed

    wait_until(lambda: read_all(source) == [] and source.lost, 5, "the lost entries")

    assert source.lost == 12 and source.claimed == 0
    assert lost_in_redis(redis_client, counts) == 12
    assert redis_client.xpending(stream, "store")["pending"] == 0  # off the pending list
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    shown = ", ".join(i.decode() for i in ids[:SHOWN_IDS])
    assert error == (
        f"LOST: 12 entries of stream {stream!r} were deleted (trimmed) while pending, before "
        f"they were stored: {shown} and {12 - SHOWN_IDS} more"
    )
    assert read_all(source) == [] and source.lost == 12  # counted once


@pytest.mark.services
def test_own_pending_entries_trimmed_are_lost_not_dead_letters(
    redis_client, stream, counts, caplog
):
    """After a lost connection the subscriber reads its own pending list first: an entry
    trimmed meanwhile comes back without fields, and is counted lost and acknowledged."""
    source = new_source(redis_client, stream, counts, claim_idle_ms=60_000)
    redis_client.xadd(stream, {"line": "1,2.00,1570358269"})
    kept = redis_client.xadd(stream, {"line": "1,3.00,1570358269"})
    assert len(read_all(source)) == 2  # pending on `source` now
    redis_client.xtrim(stream, minid=kept, approximate=False)  # the first one is gone
    source._own_pending_first[0] = True  # as after a lost connection

    (again,) = read_all(source)

    assert again.raw == b"1,3.00,1570358269" and again.problem is None
    assert source.lost == 1 and lost_in_redis(redis_client, counts) == 1
    assert redis_client.xpending(stream, "store")["pending"] == 1  # the one kept
    assert "LOST: 1 entries of stream" in caplog.text


@pytest.mark.services
def test_entries_deleted_before_the_group_read_them_are_lost_once(
    redis_client, stream, counts, caplog
):
    source = new_source(redis_client, stream, counts)
    sink = StreamSink(redis_client, stream, maxlen=0)
    sink.send(["1,1.00,1570358269", "1,2.00,1570358269"])
    read = read_all(source)
    redis_client.xack(stream, "store", *[m.entry_id for m in read])
    # The subscriber stopped; an emitter sends 3, and someone appends with MAXLEN 0.
    sink.send(["1,3.00,1570358269", "1,4.00,1570358269", "1,5.00,1570358269"])
    redis_client.xadd(stream, {"line": "x"}, maxlen=0)
    sink.send(["1,6.00,1570358269"])

    restarted = new_source(redis_client, stream, counts)
    assert [m.raw for m in read_all(restarted)] == [b"1,6.00,1570358269"]

    assert restarted.lost == 4 and lost_in_redis(redis_client, counts) == 4
    assert redis_client.xinfo_groups(stream)[0]["lag"] == 0  # the truth again
    assert re.search(
        rf"LOST: 4 entries of stream '{stream}' were deleted before group 'store' read them",
        caplog.text,
    )
    again = new_source(redis_client, stream, counts)  # another subscriber: nothing new
    assert read_all(again) == [] and again.lost == 0
    assert lost_in_redis(redis_client, counts) == 4


@pytest.mark.services
def test_acknowledged_entries_trimmed_are_not_lost(redis_client, stream, counts):
    """The subscribers trim what the group acknowledged (XTRIM MINID): nothing is lost."""
    source = new_source(redis_client, stream, counts)
    ids = [redis_client.xadd(stream, {"line": f"1,{i}.00,1570358269"}) for i in range(5)]
    read = source.read(3, 0.01)
    redis_client.xack(stream, "store", *[m.entry_id for m in read])
    redis_client.xtrim(stream, minid=ids[3], approximate=False)  # all acknowledged
    assert redis_client.xlen(stream) == 2

    restarted = new_source(redis_client, stream, counts)
    assert len(read_all(restarted)) == 2 and restarted.lost == 0
    assert lost_in_redis(redis_client, counts) == 0


@pytest.mark.services
def test_an_entry_deleted_in_the_middle_of_what_is_unread_is_reported(
    redis_client, stream, counts, caplog
):
    """XDEL of an entry the group has not read: Redis can then no longer tell how many."""
    source = new_source(redis_client, stream, counts)
    ids = [redis_client.xadd(stream, {"line": f"1,{i}.00,1570358269"}) for i in range(6)]
    source.read(2, 0.01)
    redis_client.xdel(stream, ids[4])
    restarted = new_source(redis_client, stream, counts)
    restarted.read(1, 0.01)
    restarted._next_unread_check[0] = 0  # look again at once: said once only
    restarted.read(1, 0.01)
    told = f"were deleted (XDEL, the latest {ids[4].decode()}); how many cannot be told yet"
    assert caplog.text.count(told) == 1


@pytest.mark.services
@pytest.mark.parametrize("blocking", [False, True], ids=["waiting", "arriving"])
def test_a_line_longer_than_the_cap_comes_cut_with_the_size_and_hash_of_the_whole(
    redis_client, stream, source, blocking
):
    line = b"1,2.00,1570358269," + b"\xff" * 100_000
    if blocking:  # arrives while the source waits (the blocking read)
        assert read_all(source) == []
    redis_client.xadd(stream, {"line": line})
    (message,) = source.read(100, 1.0)
    assert message.raw == line[:LINE_CAP] and message.problem is None
    assert message.whole == (len(line), hashlib.sha256(line).hexdigest())


@pytest.mark.services
@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "stream"])
def test_a_stream_key_of_another_type_is_logged_once_and_read_again_once_deleted(
    redis_client, stream, counts, caplog, kind
):
    retype(redis_client, stream, kind)
    source = new_source(redis_client, stream, counts)  # starting: no error

    for _ in range(5):  # tried again with backoff, said once
        assert read_all(source, 0.1) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"stream key {stream!r} holds a {kind}, not a stream: nothing can be read from it or "
        "acknowledged in it until someone deletes it (the group is then created again); "
        "trying again with backoff"
    ]
    assert redis_client.type(stream).decode() == kind  # left as it is

    redis_client.delete(stream)
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269"])
    read = wait_until(lambda: read_all(source, 0.05), 15, "the stream read again")
    assert [m.raw for m in read] == [b"1,2.00,1570358269"]


def test_pubsub_source_reads_in_the_background_and_returns_the_rest_on_stop(fake_redis):
    source = PubSubSource(fake_redis, "ch", buffer_size=1000)
    source.start()
    try:
        assert PubSubSink(fake_redis, "ch").send(["a", "b", "c"]) == [1, 1, 1]
        first = wait_until(lambda: source.read(2, 0.1), 5, "the first messages")
    finally:
        rest = source.stop_reading()
    assert [m.raw for m in first + rest] == [b"a", b"b", b"c"]
    assert source.disconnects == 0


def test_pubsub_source_keeps_reading_while_the_database_is_slow(fake_redis):
    """Nobody calls read() (the writer is busy): the reader still drains the channel."""
    source = PubSubSource(fake_redis, "ch", buffer_size=10_000)
    source.start()
    try:
        PubSubSink(fake_redis, "ch").send([f"m{i}" for i in range(5000)])
        wait_until(lambda: source.buffer.qsize() == 5000, 10, "5000 messages buffered")
    finally:
        assert len(source.stop_reading()) == 5000


@pytest.mark.services
def test_a_quiet_stream_does_not_look_like_a_dead_server(redis_client, key_prefix):
    """BLOCK longer than the socket timeout is a redis-py trap: reads must stay shorter."""
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(TEST_REDIS_URL, socket_timeout=0.3)
    )
    source = StreamSource(client, key_prefix + "quiet", "store", 60_000, 3)
    source.start()
    assert source.read(10, timeout=2.0) == []  # blocks 0.15 s, not 2 s past the timeout
    client.close()


@pytest.mark.services
def test_a_partition_of_another_type_holds_up_no_other(redis_client, key_prefix, caplog):
    keys = Keys(key_prefix, stream=key_prefix + "stream", partitions=2)
    redis_client.set(keys.stream_of(0), "gone")
    source = StreamSource(redis_client, keys.streams, "store", 60_000, 3)
    source.start()
    redis_client.xadd(keys.stream_of(1), {"line": "1,2.00,1570358269"})

    read = wait_until(lambda: source.read(10, 0.05), 5, "the other partition read")

    assert [(m.partition, m.raw) for m in read] == [(1, b"1,2.00,1570358269")]
    assert caplog.text.count("holds a string, not a stream") == 1


@pytest.mark.services
def test_a_deleted_stream_and_group_are_created_again(redis_client, stream, source, caplog):
    redis_client.delete(stream)  # an operator's mistake: the group goes with the stream
    assert read_all(source) == []
    assert "is gone: creating them" in caplog.text
    StreamSink(redis_client, stream, maxlen=0).send(["1,2.00,1570358269"])
    assert [m.raw for m in read_all(source)] == [b"1,2.00,1570358269"]
