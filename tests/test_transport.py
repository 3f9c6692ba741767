"""The transports on fakeredis: stream sink and source (group, claims, poison), pub/sub."""

from __future__ import annotations

import pytest
import redis

from tests.helpers import TEST_REDIS_URL
from txstream.processes import wait_until
from txstream.transport import (
    NotAStream,
    PubSubSink,
    PubSubSource,
    StreamFull,
    StreamSink,
    StreamSource,
)

STREAM = "test-stream"


@pytest.fixture
def source(fake_redis):
    """A stream consumer of group `store` that takes over entries idle for 50 ms."""
    source = StreamSource(fake_redis, STREAM, "store", claim_idle_ms=50, max_deliveries=3)
    source.start()
    return source


def read_all(source, timeout=0.01):
    return source.read(100, timeout)


def test_a_new_group_reads_the_stream_from_its_start(fake_redis):
    StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269", "2,3.00,1570358270"])
    source = StreamSource(fake_redis, STREAM, "store", claim_idle_ms=60_000, max_deliveries=3)
    source.start()
    source.start()  # the group exists now: no error
    messages = read_all(source)
    assert [m.raw for m in messages] == [b"1,2.00,1570358269", b"2,3.00,1570358270"]
    assert all(m.problem is None for m in messages)


def test_a_line_without_txn_id_gets_one_fixed_by_its_entry_id(fake_redis, source):
    StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269"])
    (message,) = read_all(source)
    assert message.missing_id == f"stream-{message.entry_id}"


def test_entries_of_a_stopped_consumer_are_taken_over_once_idle(fake_redis, source):
    StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269", "2,3.00,1570358270"])
    fake_redis.xreadgroup("store", "crashed", {STREAM: ">"}, count=10)  # read, never acked
    taken = wait_until(lambda: read_all(source), 5, "the idle entries to be taken over")
    assert [m.raw for m in taken] == [b"1,2.00,1570358269", b"2,3.00,1570358270"]
    assert source.claimed == 2
    owners = fake_redis.xpending_range(STREAM, "store", min="-", max="+", count=10)
    assert {p["consumer"].decode() for p in owners} == {source.name}


def test_an_entry_delivered_too_often_is_flagged_as_a_dead_letter(fake_redis, source):
    StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269"])
    ((_, ((entry_id, _),)),) = fake_redis.xreadgroup("store", "ghost", {STREAM: ">"})
    fake_redis.xclaim(STREAM, "store", "ghost", 0, [entry_id], retrycount=10)
    (message,) = wait_until(lambda: read_all(source), 5, "the entry to be taken over")
    assert message.problem == "delivered 11 times without being stored (MAX_DELIVERIES=3)"
    assert message.raw == b"1,2.00,1570358269"


def test_an_entry_without_a_line_field_is_flagged_with_its_fields(fake_redis, source):
    fake_redis.xadd(STREAM, {"amount": "12"})
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


def test_a_deleted_stream_and_group_are_created_again(fake_redis, source, caplog):
    fake_redis.delete(STREAM)  # an operator's mistake: the group goes with the stream
    assert read_all(source) == []
    assert "is gone: creating them" in caplog.text
    StreamSink(fake_redis, STREAM, maxlen=0).send(["1,2.00,1570358269"])
    assert [m.raw for m in read_all(source)] == [b"1,2.00,1570358269"]
