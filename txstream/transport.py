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
from redis.cluster import RedisCluster
from redis.exceptions import (
    CrossSlotTransactionError,
    InvalidPipelineStack,
    RedisClusterException,
)

import config
from txstream.keys import Keys
from txstream.redisconn import connect, resolve
from txstream.runtime import Outage

log = logging.getLogger(__name__)

# Redis cannot serve now, but will: unreachable, out of memory, or a replica mid-failover.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    # a cluster whose slots are moving, or whose master of a slot is down: failing over
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.AskError,  # and MovedError: a slot moved under a per-node client
)
LINE_FIELD = b"line"  # a stream entry is {"line": "<wire line>"}
STALE_CONSUMER_MS = 24 * 3600 * 1000  # a consumer idle this long, with nothing pending, goes
# Several partitions: when none has entries, block on one of them this long (s) at most,
# so an entry in another waits at most about this long.
POLL_BLOCK = 0.05


def is_redis_outage(exc: BaseException) -> bool:
    """Whether `exc` means Redis is unavailable for now (retry), not that a command is wrong."""
    if isinstance(exc, RedisClusterException):  # no RedisError: the cluster client's own
        return not isinstance(exc, (CrossSlotTransactionError, InvalidPipelineStack))
    return isinstance(exc, (*REDIS_ERRORS, NotReplicated)) or _moved(exc)


def _moved(exc: BaseException) -> bool:
    """A plain client's reply that a cluster slot is elsewhere now (or being failed over)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(
        ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
    )


class NotReplicated(redis.RedisError):
    """Fewer replicas than MIN_REPLICAS confirmed a chunk (WAIT): it may vanish in a
    failover, so it is kept, and sent again."""

    def __init__(self, partition: int, confirmed: int, needed: int) -> None:
        super().__init__(f"{confirmed} of the {needed} replica(s) needed confirmed")
        self.partition = partition
        self.confirmed = confirmed
        self.needed = needed


class StreamFull(Exception):
    """A partition's stream holds STREAM_MAXLEN entries that some consumer group has not
    acknowledged: only the first `sent` lines were appended; the rest must wait."""

    def __init__(self, partition: int, stream: str, length: int, maxlen: int, sent: int) -> None:
        super().__init__(
            f"stream {stream!r} holds {length} entries not yet acknowledged "
            f"(STREAM_MAXLEN={maxlen})"
        )
        self.partition = partition
        self.stream = stream
        self.length = length
        self.maxlen = maxlen
        self.sent = sent


class NotAStream(Exception):
    """The key of a partition's stream holds another type (an operator's or an attacker's
    doing): nothing was appended."""

    def __init__(self, partition: int, key: str, kind: str) -> None:
        super().__init__(f"the stream key {key!r} holds a {kind}, not a stream")
        self.partition = partition
        self.key = key
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Message:
    """One message as received: the raw line and, from a stream, its entry id."""

    raw: bytes
    entry_id: str | None = None
    problem: str | None = None  # set when the message is a dead letter before parsing
    partition: int = 0  # the partition (stream, channel) it came from

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
_SPUBLISH_ALL = """  -- sharded pub/sub: the channel is a key, in its node's slots
local receivers = {}
for i = 1, #ARGV do receivers[i] = redis.call('SPUBLISH', KEYS[1], ARGV[i]) end
return receivers
"""
# Appends what fits: the stream is never trimmed here (the subscribers trim what every
# group acknowledged: TRIM_ACKNOWLEDGED_LUA), so at STREAM_MAXLEN (ARGV[1]; 0: no cap) the
# entries left are unacknowledged ones, and the rest waits in the emitter. Each entry is
# {line = <wire line>} (LINE_FIELD). Returns {appended, length after}, or {-1, the key's
# type} when the key is no stream (nothing appended).
_XADD_ALL = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then return {-1, kind} end
local length, room, cap = redis.call('XLEN', KEYS[1]), #ARGV - 1, tonumber(ARGV[1])
if cap > 0 then room = math.max(0, math.min(room, cap - length)) end
for i = 2, room + 1 do redis.call('XADD', KEYS[1], '*', 'line', ARGV[i]) end
return {room, length + room}
"""

# Lua, for the subscribers' batch script: trims the stream KEYS[1] of what every consumer
# group of it has acknowledged, never more: XTRIM MINID up to the oldest entry some group
# still needs, pending (XPENDING's oldest) or not yet delivered (after its
# last-delivered-id). `~`: whole nodes of the stream only, the cheap trim. A stream
# without a group is left alone (nobody says what was read), and a missing one too (XINFO
# would fail the batch's script after its writes). Ids are compared as decimal strings,
# exactly, whatever their size.
TRIM_ACKNOWLEDGED_LUA = """
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return #am < #bm or (#am == #bm and am < bm) end
  return #as < #bs or (#as == #bs and as < bs)
end
local function after(id)  -- the id next to `id`; `id` itself when too long to add to
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if #seq > 15 then return id end
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end
local function trim_acknowledged(stream)
  if redis.call('XLEN', stream) == 0 then return 0 end
  local keep = nil
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local group = {}
    for i = 1, #row, 2 do group[row[i]] = row[i + 1] end
    local needed = after(group['last-delivered-id'])
    if group['pending'] > 0 then
      needed = redis.call('XPENDING', stream, group['name'])[2]
    end
    if keep == nil or id_less(needed, keep) then keep = needed end
  end
  if keep == nil then return 0 end
  return redis.call('XTRIM', stream, 'MINID', '~', keep)
end
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


class PartitionsMismatch(ValueError):
    """This process's STREAM_PARTITIONS is not the one the others use."""


def agree_on_partitions(client: redis.Redis, keys: Keys) -> None:
    """Record STREAM_PARTITIONS for every emitter and subscriber, or check it against the
    one recorded: with another count, a user's partition would be another one, and their
    recent list another key. Raises `PartitionsMismatch`."""
    try:
        client.set(keys.partitions_record, keys.partitions, nx=True)
        recorded = client.get(keys.partitions_record)
    except redis.ResponseError as exc:  # WRONGTYPE: not the record txstream writes
        if _moved(exc):
            raise
        raise PartitionsMismatch(
            f"{keys.partitions_record} is not a partition count ({exc}): delete it, and start again"
        ) from None
    if recorded != str(keys.partitions).encode():
        theirs = (recorded or b"").decode("utf-8", "replace")[:20]
        raise PartitionsMismatch(
            f"STREAM_PARTITIONS is {keys.partitions}, but the emitters and subscribers of "
            f"this Redis (key prefix {keys.prefix!r}) use {theirs}: set it to theirs "
            f"(changing it means draining the streams first, then deleting "
            f"{keys.partitions_record})"
        )


def consumer_name() -> str:
    """A subscriber's name, unique among them: host, pid and a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Sink(Protocol):
    """Where the emitter sends its wire lines: one target (stream, channel) per partition."""

    def describe(self) -> str:
        """What the lines go to, for the log."""

    def send(self, lines: Sequence[str], partition: int = 0) -> list[int]:
        """Send `lines` to a partition in order, in one round trip; how many readers got
        each (0: none). Raises `NotReplicated` when fewer replicas than needed hold them;
        a stream raises `StreamFull` when only some fitted, `NotAStream` when its key is
        of another type."""

    def replicas(self, partition: int) -> int:
        """How many replicas the partition's master has online now."""

    def refresh(self) -> None:
        """Learn again which node serves which partition (after an error: a failover?)."""


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
        return StreamSink(
            client,
            keys.streams,
            settings.stream_maxlen,
            settings.replicas_needed,
            settings.replica_wait_ms,
        )
    return PubSubSink(client, keys.channels, sharded=bool(settings.redis_cluster))


def make_source(settings: config.Settings, client: redis.Redis) -> Source:
    """The source TRANSPORT names: the pub/sub channel or the stream's consumer group."""
    keys = settings.keys
    if settings.transport == "stream":
        return StreamSource(
            client, keys.streams, settings.group, settings.claim_idle_ms, settings.max_deliveries
        )
    return PubSubSource(
        client, keys.channels, settings.pubsub_buffer, sharded=bool(settings.redis_cluster)
    )


def listening(settings: config.Settings) -> bool:
    """Whether what the emitter sends now will be read: a stream keeps it for its readers;
    a pub/sub message only reaches the subscribers of that moment, if any."""
    if settings.transport == "stream":
        return True
    try:
        settings = resolve(settings)
        with connect(settings, socket_timeout=2) as client:
            channel = settings.keys.channel_of(0)
            if settings.redis_cluster:  # a shard channel's subscribers are on its node
                return bool(client.pubsub_shardnumsub(channel)[0][1])
            return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) > 0
    except redis.RedisError:
        return False


class PubSubSink:
    """Publishes lines to the pub/sub channel of their partition (sharded on a cluster)."""

    def __init__(
        self, client: redis.Redis, channels: str | Sequence[str], sharded: bool = False
    ) -> None:
        self.client = client
        self.channels = [channels] if isinstance(channels, str) else list(channels)
        self.sharded = sharded

    def describe(self) -> str:
        kind = "sharded pub/sub" if self.sharded else "pub/sub"
        return f"{_named('channel', self.channels)} ({kind})"

    def send(self, lines: Sequence[str], partition: int = 0) -> list[int]:
        """Publish `lines` in one round trip; how many subscribers received each."""
        if not lines:
            return []
        channel = self.channels[partition]
        if self.sharded:
            return self.client.eval(_SPUBLISH_ALL, 1, channel, *lines)
        return self.client.eval(_PUBLISH_ALL, 0, channel, *lines)

    def replicas(self, partition: int) -> int:
        """Not asked: pub/sub keeps nothing that a replica could hold."""
        return 0

    def refresh(self) -> None:
        """Nothing to learn: the cluster client follows a channel's slot itself."""


class StreamSink:
    """Appends lines to the stream of their partition, never trimming it: at `maxlen`
    entries (0: no cap) it appends no more and raises `StreamFull`, as what is left in a
    stream is unacknowledged (the subscribers trim the rest). With `min_replicas`, waits
    until that many replicas hold each chunk (WAIT, up to `wait_ms`), or raises
    `NotReplicated`.

    WAIT counts what the replicas acknowledged of the writes made on its own connection,
    so the chunk and the WAIT go down one connection to the partition's master, in one
    round trip (a pipeline of a client of that node; on a cluster, of the node that
    serves the stream's slot now).
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: str | Sequence[str],
        maxlen: int,
        min_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.client = client
        self.streams = [streams] if isinstance(streams, str) else list(streams)
        self.maxlen = maxlen
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms

    def describe(self) -> str:
        wait = f", each chunk held by {self.min_replicas} replica(s)" if self.min_replicas else ""
        return _named("stream", self.streams) + wait

    def send(self, lines: Sequence[str], partition: int = 0) -> list[int]:
        """Append `lines` in one round trip; 1 for each (the stream keeps them all).
        Raises `NotAStream` when the key is of another type (nothing appended), else
        `NotReplicated` when the replicas did not confirm, else `StreamFull` when only
        the first lines fitted."""
        if not lines:
            return []
        stream = self.streams[partition]
        with self._master_of(stream).pipeline(transaction=False) as pipe:
            pipe.eval(_XADD_ALL, 1, stream, self.maxlen, *lines)
            if self.min_replicas:
                pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
            replies = pipe.execute()
        appended, length = replies[0]
        if appended < 0:
            raise NotAStream(partition, stream, length.decode("utf-8", "replace"))
        if self.min_replicas and replies[1] < self.min_replicas:
            raise NotReplicated(partition, replies[1], self.min_replicas)
        if appended < len(lines):
            raise StreamFull(partition, stream, length, self.maxlen, appended)
        return [1] * appended

    def replicas(self, partition: int) -> int:
        """The replicas online of the master of a partition's stream (0 while the node
        asked turns out not to be its master: the slots are read again for the next ask)."""
        info = self._master_of(self.streams[partition]).info("replication")
        if info.get("role") != "master":
            self.refresh()
            return 0
        return sum(
            1
            for name, value in info.items()
            if name.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )

    def refresh(self) -> None:
        """On a cluster, ask the nodes again which master serves each slot."""
        refresh_slots(self.client)

    def _master_of(self, stream: str) -> redis.Redis:
        return master_of(self.client, stream)


def master_of(client: redis.Redis, key: str) -> redis.Redis:
    """A client of the node that serves `key` (the client itself off a cluster).

    Besides WAIT, which must follow the writes on their connection, this is for XREADGROUP:
    redis-py's cluster client asks a node of its own choosing (the master of slot 0) where
    that command's keys are, so while that master is down it would fail on every stream.
    """
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def refresh_slots(client: redis.Redis) -> None:
    """On a cluster, ask the nodes again which master serves each slot: done before trying
    a node again after an error, as a failover may have moved its slots meanwhile."""
    if isinstance(client, RedisCluster):
        try:
            client.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as exc:
            log.info("could not read the cluster's slots yet: %s", exc)


class ConnectingSink:
    """The sink of `settings` (`make_sink`), made once Redis first answers: only then is it
    known whether REDIS_URL is a cluster's node, so which client and names to use. Until
    then `send` raises the connection error, and the emitter keeps its lines."""

    def __init__(self, settings: config.Settings, **client_kwargs) -> None:
        self.settings = settings
        self.client_kwargs = client_kwargs
        self.client: redis.Redis | None = None
        self._sink: Sink | None = None

    def describe(self) -> str:
        return (self._sink or make_sink(self.settings, None)).describe()

    def send(self, lines: Sequence[str], partition: int = 0) -> list[int]:
        return self._made().send(lines, partition)

    def replicas(self, partition: int) -> int:
        return self._made().replicas(partition)

    def refresh(self) -> None:
        if self._sink is not None:
            self._sink.refresh()

    def close(self) -> None:
        """Close the client, if made."""
        if self.client is not None:
            self.client.close()

    def _made(self) -> Sink:
        if self._sink is None:
            settings = resolve(self.settings)
            client = connect(settings, **self.client_kwargs)
            try:
                agree_on_partitions(client, settings.keys)
            except BaseException:
                client.close()
                raise
            self.client, self._sink = client, make_sink(settings, client)
            log.info(
                "connected to %s%s: sending to %s",
                config.mask_url(settings.redis_url),
                " (Redis Cluster)" if settings.redis_cluster else "",
                self._sink.describe(),
            )
        return self._sink


def _named(kind: str, names: list[str]) -> str:
    """`stream 'x'`, or `3 streams 'x', 'y', 'z'`, for the log."""
    if len(names) == 1:
        return f"{kind} {names[0]!r}"
    return f"{len(names)} {kind}s " + ", ".join(repr(n) for n in names)


class PubSubSource:
    """Reads the partitions' channels in a thread of its own, into a bounded buffer.

    So a slow database never slows the reading: Redis drops a subscriber that falls
    32 MB behind. When the buffer is full the reader waits, and Redis buffers. A
    reconnect (redis-py reconnects on its own) shows up as a second subscribe
    confirmation; it is logged loudly and counted, since messages may have been lost.
    `sharded`: shard channels (SSUBSCRIBE), each read from the node that serves it.
    """

    def __init__(
        self,
        client: redis.Redis,
        channels: str | Sequence[str],
        buffer_size: int,
        sharded: bool = False,
    ) -> None:
        self.client = client
        self.channels = [channels] if isinstance(channels, str) else list(channels)
        self._partition = {c.encode(): p for p, c in enumerate(self.channels)}
        self.sharded = sharded
        self._kind = ("ssubscribe", "smessage") if sharded else ("subscribe", "message")
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
            self._subscribe(pubsub)
            deadline, confirmed = time.monotonic() + 10, 0
            while confirmed < len(self.channels):
                reply = self._next(pubsub, 0.5)
                confirmed += reply is not None and reply["type"] == self._kind[0]
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no subscribe confirmation within 10 s")
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        self._thread.start()

    def describe(self) -> str:
        kind = "sharded pub/sub" if self.sharded else "pub/sub"
        return f"{_named('channel', self.channels)} ({kind}) as {self.name!r}"

    def _subscribe(self, pubsub) -> None:
        if self.sharded:
            pubsub.ssubscribe(*self.channels)
        else:
            pubsub.subscribe(*self.channels)

    def _next(self, pubsub, timeout: float) -> dict | None:
        if self.sharded:
            return pubsub.get_sharded_message(timeout=timeout)
        return pubsub.get_message(timeout=timeout)

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
        subscriptions = expected = len(self.channels)  # start() saw their confirmations
        try:
            while not self._stopping.is_set():
                try:
                    if not pubsub.subscribed:
                        self._subscribe(pubsub)
                    message = self._next(pubsub, 0.2)
                except REDIS_ERRORS as exc:
                    if not outage.down:
                        self._lost(exc)
                    subscriptions = 0  # the next confirmation is the expected one
                    self._stopping.wait(outage.failed(exc))
                    continue
                outage.ok()
                if message is None:
                    continue
                if message["type"] == self._kind[0]:
                    subscriptions += 1
                    if subscriptions > expected:  # counted once per reconnect
                        self._lost("reconnected and subscribed again")
                        subscriptions -= expected
                elif message["type"] == self._kind[1]:
                    partition = self._partition.get(message["channel"], 0)
                    self._put(Message(message["data"], partition=partition))
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
    """Reads the partitions' streams as one consumer of a consumer group; acks after the
    commit.

    Every subscriber reads every partition: no assignment to agree on, and a subscriber
    that dies leaves no partition unread. A user's transactions stay in order in their
    stream, but two subscribers may store them in either order: nothing depends on it
    (the windows are sums; the recent lists merge by time).

    Entries pending on a consumer that died are taken over with XAUTOCLAIM once idle
    for `claim_idle_ms`. An entry handed out more than `max_deliveries` times is
    returned flagged, for the subscriber to dead-letter and acknowledge.
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: str | Sequence[str],
        group: str,
        claim_idle_ms: int,
        max_deliveries: int,
    ) -> None:
        self.client = client
        self.streams = [streams] if isinstance(streams, str) else list(streams)
        self.group = group
        self.name = consumer_name()
        self.stale_consumer_ms = STALE_CONSUMER_MS
        self._delete_stale = client.register_script(_DELETE_STALE)
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.durable = True  # entries stay pending until acknowledged
        self.disconnects = 0  # always 0: the subscriber counts the outages it meets
        self.claimed = 0
        n = len(self.streams)
        self._claim_cursor = ["0-0"] * n
        self._next_claim = [0.0] * n
        self._own_pending_first = [False] * n
        self._retry_at = [0.0] * n  # several partitions: when to try a failing one again
        self._outages = [Outage(f"redis ({stream})") for stream in self.streams]
        self._turn = 0  # the partition read first next time: each gets its turn
        # A BLOCK as long as the socket timeout makes a quiet stream look like a dead
        # server (a known redis-py trap): block for half of it at most.
        socket_timeout = _socket_timeout(client)
        self._max_block = socket_timeout / 2 if socket_timeout else 1.0

    def start(self) -> None:
        """Create the group on each stream if missing (a new group reads from the start)."""
        for stream in self.streams:
            self._create_group(stream)

    def _create_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %r on stream %r", self.group, stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def describe(self) -> str:
        return f"{_named('stream', self.streams)} as {self.name!r} in group {self.group!r}"

    def read(self, max_count: int, timeout: float) -> list[Message]:
        """Entries taken over from dead consumers, or else new ones (blocking up to
        `timeout`): from the partitions in turn, up to `max_count` in all.

        One stream: its errors are raised. Several: a partition whose master cannot serve
        (failing over) waits its backoff, logged, while the others are read; an error is
        raised only when none could be read.
        """
        n = len(self.streams)
        if n == 1:
            return self._read_partition(0, max_count, timeout)
        messages: list[Message] = []
        failure = None
        for step in range(n):
            p = (self._turn + step) % n
            if time.monotonic() < self._retry_at[p]:
                continue
            try:  # look at each without blocking
                messages += self._read_partition(p, max_count - len(messages), None)
            except Exception as exc:
                if not is_redis_outage(exc):
                    raise
                failure = exc
                self._retry_at[p] = time.monotonic() + self._outages[p].failed(exc)
                continue
            self._outages[p].ok()
            if len(messages) >= max_count:
                break
        self._turn = (self._turn + 1) % n
        if messages:
            return messages
        if failure is not None and all(t > time.monotonic() for t in self._retry_at):
            raise failure
        # All empty: block on one (briefly: the others may fill meanwhile).
        ready = [p for p in range(n) if time.monotonic() >= self._retry_at[p]]
        if not ready:  # each waits its backoff: wait too, not spin
            time.sleep(max(0, min(timeout, min(self._retry_at) - time.monotonic())))
            return []
        return self._read_partition(ready[0], max_count, min(timeout, POLL_BLOCK))

    def _read_partition(self, p: int, max_count: int, timeout: float | None) -> list[Message]:
        try:
            return self._read(p, max_count, timeout)
        except REDIS_ERRORS:
            self._own_pending_first[p] = True
            raise
        except redis.ResponseError as exc:
            if _moved(exc):
                self._own_pending_first[p] = True
                raise
            if "NOGROUP" not in str(exc):
                raise
            stream = self.streams[p]
            log.error("stream %r or group %r is gone: creating them", stream, self.group)
            self._create_group(stream)
            return []

    def _read(self, p: int, max_count: int, timeout: float | None) -> list[Message]:
        """Up to `max_count` entries of partition `p`; a `timeout` of None: without waiting."""
        stream = self.streams[p]
        if self._own_pending_first[p]:  # after an error: a failover?
            refresh_slots(self.client)
        if time.monotonic() >= self._next_claim[p]:
            claimed = self._claim(p, max_count)
            if claimed:
                return claimed
        node = master_of(self.client, stream)
        if self._own_pending_first[p]:
            # After a lost connection, entries handed to us may never have arrived:
            # read our own pending list first, instead of waiting CLAIM_IDLE_MS.
            reply = node.xreadgroup(self.group, self.name, {stream: "0"}, count=max_count)
            self._own_pending_first[p] = False
        else:
            block = None if timeout is None else max(int(min(timeout, self._max_block) * 1000), 1)
            reply = node.xreadgroup(
                self.group, self.name, {stream: ">"}, count=max_count, block=block
            )
        return [
            self._message(p, entry_id, fields)
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    def stop_reading(self) -> list[Message]:
        """Nothing is read ahead: unread entries stay in the stream."""
        return []

    def tidy(self, live: set[str]) -> None:
        """Delete the group's consumers idle for over `stale_consumer_ms` with nothing pending
        (subscribers long gone), except live ones; each deletion is logged."""
        for stream in self.streams:
            deleted = self._delete_stale(
                [stream], [self.group, self.stale_consumer_ms, self.name, *sorted(live)]
            )
            for name, idle in deleted:
                log.info(
                    "deleted consumer %r of group %r on %r: idle for %d s, nothing pending",
                    name.decode("utf-8", "replace"),
                    self.group,
                    stream,
                    idle // 1000,
                )

    def _claim(self, p: int, max_count: int) -> list[Message]:
        stream = self.streams[p]
        cursor, entries, _deleted = self.client.xautoclaim(
            stream,
            self.group,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor[p],
            count=max_count,
        )
        self._claim_cursor[p] = cursor
        if cursor in (b"0-0", "0-0"):  # scanned every pending entry: pause a while
            self._next_claim[p] = time.monotonic() + min(1.0, self.claim_idle_ms / 2000)
        if not entries:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
            pending = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        self.claimed += len(entries)
        log.warning(
            "took over %d entries of %r pending on another consumer for over %d ms",
            len(entries),
            stream,
            self.claim_idle_ms,
        )
        return [
            self._message(p, entry_id, fields, deliveries)
            for (entry_id, fields), deliveries in zip(entries, pending, strict=True)
        ]

    def _message(self, p: int, entry_id: bytes, fields: dict, deliveries: int = 1) -> Message:
        entry = entry_id.decode()
        if LINE_FIELD not in fields:
            problem = "stream entry has no 'line' field"
            return Message(_describe_fields(fields), entry, problem, p)
        if deliveries > self.max_deliveries:
            problem = (
                f"delivered {deliveries} times without being stored "
                f"(MAX_DELIVERIES={self.max_deliveries})"
            )
            return Message(fields[LINE_FIELD], entry, problem, p)
        return Message(fields[LINE_FIELD], entry, partition=p)


def _describe_fields(fields: dict[bytes, bytes]) -> bytes:
    """The raw form of an entry without a `line` field, kept in its dead letter."""
    return repr({k.decode("utf-8", "backslashreplace"): v for k, v in fields.items()}).encode()


def _socket_timeout(client: redis.Redis) -> float | None:
    """The socket timeout a client's connections have (on a cluster: its nodes')."""
    if isinstance(client, RedisCluster):
        return client.nodes_manager.connection_kwargs.get("socket_timeout")
    return client.connection_pool.connection_kwargs.get("socket_timeout")
