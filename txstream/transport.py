"""How transactions travel through Redis: pub/sub (the design card) or a stream (durable).

Pub/sub is at most once: what is published while no subscriber reads is gone. A Redis
stream keeps every entry until the consumer group acknowledges it, and the subscriber
acknowledges only after its database commit, so a crash or an outage loses nothing.

The emitter sends wire lines with a `Sink`; the subscriber reads `Message`s from a
`Source`, and the store acknowledges stream entries in the same Redis script that writes
the batch (txstream.store). `make_sink` and `make_source` choose by TRANSPORT, here only.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

import config
from txstream.runtime import Outage

log = logging.getLogger(__name__)

# Redis cannot serve now, but will: unreachable, out of memory, or a replica mid-failover.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)
LINE_FIELD = b"line"  # a stream entry is {"line": "<wire line>"}
STALE_CONSUMER_MS = 24 * 3600 * 1000  # a consumer idle this long, with nothing pending, goes


def is_redis_outage(exc: BaseException) -> bool:
    """Whether `exc` means Redis is unavailable for now (retry), not that a command is wrong."""
    return isinstance(exc, REDIS_ERRORS)


@dataclass(frozen=True, slots=True)
class Message:
    """One message as received: the raw line and, from a stream, its entry id."""

    raw: bytes
    entry_id: str | None = None
    problem: str | None = None  # set when the message is a dead letter before parsing

    @property
    def missing_id(self) -> str | None:
        """The txn_id of a 3-field line: fixed by the entry id, so a redelivery matches."""
        return f"stream-{self.entry_id}" if self.entry_id else None


# The sinks send a whole chunk of lines as one script call: one command and one reply
# instead of one per line, which more than doubled the emitter's burst (see
# docs/BENCHMARKS.md). Lines are published or appended in order, as given. A script runs
# with the emitter's Redis rights: deploy/redis.acl grants each command it calls.
_PUBLISH_ALL = """
local receivers = {}
for i = 2, #ARGV do receivers[i - 1] = redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return receivers
"""
_XADD_ALL = """  -- each entry is {line = <wire line>}: LINE_FIELD
local trim = tonumber(ARGV[1]) > 0
for i = 2, #ARGV do
  if trim then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'line', ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'line', ARGV[i])
  end
end
return #ARGV - 1
"""


# Deletes the group's consumers idle for over ARGV[2] ms with nothing pending, except those
# named in ARGV[3:] (the live subscribers). Checked and deleted in one script, so no entry
# can be handed to a consumer between the check and its deletion (which would drop it).
_DELETE_STALE = """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local deleted = {}
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and not keep[info['name']] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted[#deleted + 1] = {info['name'], info['idle']}
  end
end
return deleted
"""


def consumer_name() -> str:
    """A subscriber's name, unique among them: host, pid and a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Sink(Protocol):
    """Where the emitter sends its wire lines."""

    def describe(self) -> str:
        """What the lines go to, for the log."""

    def send(self, lines: Sequence[str]) -> list[int]:
        """Send `lines` in order, in one round trip; how many readers got each (0: none)."""


class Source(Protocol):
    """Where the subscriber reads messages from."""

    name: str  # the subscriber's name (consumer_name), in the log and its heartbeat
    durable: bool  # whether what was read but not stored is delivered again
    group: str | None  # the consumer group to acknowledge stored entries in, if any
    claimed: int  # messages taken over from other subscribers
    disconnects: int  # connections lost while reading in the background

    def start(self) -> None:
        """Connect (raising while Redis is unreachable)."""

    def describe(self) -> str:
        """What is read, for the log."""

    def read(self, max_count: int, timeout: float) -> list[Message]:
        """Up to `max_count` messages, waiting up to `timeout` s for the first."""

    def stop_reading(self) -> list[Message]:
        """Stop; the messages read ahead that must still be stored."""

    def tidy(self, live: set[str]) -> None:
        """Housekeeping, now and then, beside the reading (`live`: the live subscribers)."""


def make_sink(settings: config.Settings, client: redis.Redis) -> Sink:
    """The sink TRANSPORT names: the pub/sub channel or the stream."""
    keys = settings.keys
    if settings.transport == "stream":
        return StreamSink(client, keys.stream, settings.stream_maxlen)
    return PubSubSink(client, keys.channel)


def make_source(settings: config.Settings, client: redis.Redis) -> Source:
    """The source TRANSPORT names: the pub/sub channel or the stream's consumer group."""
    keys = settings.keys
    if settings.transport == "stream":
        return StreamSource(
            client, keys.stream, settings.group, settings.claim_idle_ms, settings.max_deliveries
        )
    return PubSubSource(client, keys.channel, settings.pubsub_buffer)


def listening(settings: config.Settings) -> bool:
    """Whether what the emitter sends now will be read: a stream keeps it for its readers;
    a pub/sub message only reaches the subscribers of that moment, if any."""
    if settings.transport == "stream":
        return True
    try:
        with redis.Redis.from_url(settings.redis_url, socket_timeout=2) as client:
            channel = settings.keys.channel
            return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) > 0
    except redis.RedisError:
        return False


class PubSubSink:
    """Publishes lines to a pub/sub channel."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel

    def describe(self) -> str:
        return f"channel {self.channel!r} (pub/sub)"

    def send(self, lines: Sequence[str]) -> list[int]:
        """Publish `lines` in one round trip; how many subscribers received each."""
        if not lines:
            return []
        return self.client.eval(_PUBLISH_ALL, 0, self.channel, *lines)


class StreamSink:
    """Appends lines to a stream, trimmed to about `maxlen` entries (0: never trimmed)."""

    def __init__(self, client: redis.Redis, stream: str, maxlen: int) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen

    def describe(self) -> str:
        return f"stream {self.stream!r}"

    def send(self, lines: Sequence[str]) -> list[int]:
        """Append `lines` in one round trip; 1 for each (the stream keeps them all)."""
        if not lines:
            return []
        added = self.client.eval(_XADD_ALL, 1, self.stream, self.maxlen, *lines)
        return [1] * added


class PubSubSource:
    """Reads a channel in a thread of its own, into a bounded buffer.

    So a slow database never slows the reading: Redis drops a subscriber that falls
    32 MB behind. When the buffer is full the reader waits, and Redis buffers. A
    reconnect (redis-py reconnects on its own) shows up as a second subscribe
    confirmation; it is logged loudly and counted, since messages may have been lost.
    """

    def __init__(self, client: redis.Redis, channel: str, buffer_size: int) -> None:
        self.client = client
        self.channel = channel
        self.buffer: queue.Queue[Message] = queue.Queue(maxsize=buffer_size)
        self.name = consumer_name()
        self.durable = False  # what is published while nobody reads is gone
        self.group = None
        self.disconnects = 0
        self.claimed = 0  # pub/sub has nothing to take over
        self._pubsub: redis.client.PubSub | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read_forever, name="pubsub", daemon=True)

    def start(self) -> None:
        """Subscribe (raising while Redis is unreachable), then read in the background."""
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + 10
            while (reply := pubsub.get_message(timeout=0.5)) is None or reply[
                "type"
            ] != "subscribe":
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no subscribe confirmation within 10 s")
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        self._thread.start()

    def describe(self) -> str:
        return f"channel {self.channel!r} (pub/sub) as {self.name!r}"

    def read(self, max_count: int, timeout: float) -> list[Message]:
        """Up to `max_count` buffered messages, waiting up to `timeout` s for the first."""
        try:
            messages = [self.buffer.get(timeout=max(timeout, 0))]
        except queue.Empty:
            return []
        while len(messages) < max_count:
            try:
                messages.append(self.buffer.get_nowait())
            except queue.Empty:
                break
        return messages

    def stop_reading(self) -> list[Message]:
        """Stop the reader; the messages it had read (they must still be stored)."""
        self._stopping.set()
        left = []
        while self._thread.is_alive() or not self.buffer.empty():
            try:
                left.append(self.buffer.get(timeout=0.05))
            except queue.Empty:
                pass
        return left

    def tidy(self, live: set[str]) -> None:
        """Nothing to tidy: a channel keeps nothing."""

    def _read_forever(self) -> None:
        pubsub = self._pubsub
        outage = Outage("redis")
        subscriptions = 1  # start() saw the first confirmation
        try:
            while not self._stopping.is_set():
                try:
                    if not pubsub.subscribed:
                        pubsub.subscribe(self.channel)
                    message = pubsub.get_message(timeout=0.2)
                except REDIS_ERRORS as exc:
                    if not outage.down:
                        self._lost(exc)
                    subscriptions = 0  # the next confirmation is the expected one
                    self._stopping.wait(outage.failed(exc))
                    continue
                outage.ok()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    subscriptions += 1
                    if subscriptions > 1:
                        self._lost("reconnected and subscribed again")
                elif message["type"] == "message":
                    self._put(Message(message["data"]))
        finally:
            pubsub.close()

    def _put(self, message: Message) -> None:
        # Waits while the buffer is full; stop_reading() drains it, so this ends.
        self.buffer.put(message)

    def _lost(self, why: object) -> None:
        self.disconnects += 1
        log.error(
            "pub/sub connection lost (%s): messages published meanwhile are LOST; "
            "use TRANSPORT=stream to keep them",
            why,
        )


class StreamSource:
    """Reads a stream as one consumer of a consumer group; acks after the commit.

    Entries pending on a consumer that died are taken over with XAUTOCLAIM once idle
    for `claim_idle_ms`. An entry handed out more than `max_deliveries` times is
    returned flagged, for the subscriber to dead-letter and acknowledge.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        claim_idle_ms: int,
        max_deliveries: int,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.name = consumer_name()
        self.stale_consumer_ms = STALE_CONSUMER_MS
        self._delete_stale = client.register_script(_DELETE_STALE)
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.durable = True  # entries stay pending until acknowledged
        self.disconnects = 0  # always 0: the subscriber counts the outages it meets
        self.claimed = 0
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._own_pending_first = False
        # A BLOCK as long as the socket timeout makes a quiet stream look like a dead
        # server (a known redis-py trap): block for half of it at most.
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block = socket_timeout / 2 if socket_timeout else 1.0

    def start(self) -> None:
        """Create the group if missing (a new group reads the stream from its start)."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %r on stream %r", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def describe(self) -> str:
        return f"stream {self.stream!r} as {self.name!r} in group {self.group!r}"

    def read(self, max_count: int, timeout: float) -> list[Message]:
        """Entries taken over from dead consumers, or else new ones (blocking up to `timeout`)."""
        try:
            return self._read(max_count, timeout)
        except REDIS_ERRORS:
            self._own_pending_first = True
            raise
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.error("stream %r or group %r is gone: creating them", self.stream, self.group)
            self.start()
            return []

    def _read(self, max_count: int, timeout: float) -> list[Message]:
        if time.monotonic() >= self._next_claim:
            claimed = self._claim(max_count)
            if claimed:
                return claimed
        if self._own_pending_first:
            # After a lost connection, entries handed to us may never have arrived:
            # read our own pending list first, instead of waiting CLAIM_IDLE_MS.
            reply = self.client.xreadgroup(
                self.group, self.name, {self.stream: "0"}, count=max_count
            )
            self._own_pending_first = False
        else:
            reply = self.client.xreadgroup(
                self.group,
                self.name,
                {self.stream: ">"},
                count=max_count,
                block=max(int(min(timeout, self._max_block) * 1000), 1),
            )
        return [
            self._message(entry_id, fields)
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    def stop_reading(self) -> list[Message]:
        """Nothing is read ahead: unread entries stay in the stream."""
        return []

    def tidy(self, live: set[str]) -> None:
        """Delete the group's consumers idle for over `stale_consumer_ms` with nothing pending
        (subscribers long gone), except live ones; each deletion is logged."""
        deleted = self._delete_stale(
            [self.stream], [self.group, self.stale_consumer_ms, self.name, *sorted(live)]
        )
        for name, idle in deleted:
            log.info(
                "deleted consumer %r of group %r: idle for %d s, nothing pending",
                name.decode("utf-8", "replace"),
                self.group,
                idle // 1000,
            )

    def _claim(self, max_count: int) -> list[Message]:
        cursor, entries, _deleted = self.client.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=max_count,
        )
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):  # scanned every pending entry: pause a while
            self._next_claim = time.monotonic() + min(1.0, self.claim_idle_ms / 2000)
        if not entries:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            pending = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        self.claimed += len(entries)
        log.warning(
            "took over %d entries pending on another consumer for over %d ms",
            len(entries),
            self.claim_idle_ms,
        )
        return [
            self._message(entry_id, fields, deliveries)
            for (entry_id, fields), deliveries in zip(entries, pending, strict=True)
        ]

    def _message(self, entry_id: bytes, fields: dict, deliveries: int = 1) -> Message:
        entry = entry_id.decode()
        if LINE_FIELD not in fields:
            return Message(_describe_fields(fields), entry, "stream entry has no 'line' field")
        if deliveries > self.max_deliveries:
            problem = (
                f"delivered {deliveries} times without being stored "
                f"(MAX_DELIVERIES={self.max_deliveries})"
            )
            return Message(fields[LINE_FIELD], entry, problem)
        return Message(fields[LINE_FIELD], entry)


def _describe_fields(fields: dict[bytes, bytes]) -> bytes:
    """The raw form of an entry without a `line` field, kept in its dead letter."""
    return repr({k.decode("utf-8", "backslashreplace"): v for k, v in fields.items()}).encode()
