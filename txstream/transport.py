"""How transactions travel through Redis: pub/sub (the design card) or a stream (durable).

Pub/sub is at most once: what is published while no subscriber reads is gone. A Redis
stream keeps every entry until the consumer group acknowledges it, and the subscriber
acknowledges only after its database commit, so a crash or an outage loses nothing.

The emitter sends wire lines with a `Sink`; the subscriber reads `Message`s from a
`Source`, and the store acknowledges stream entries in the same Redis script that writes
the batch (txstream.store). `make_sink` and `make_source` choose by TRANSPORT, here only.
"""

from __future__ import annotations

import hashlib
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
from redis.commands.core import Script
from redis.exceptions import (
    CrossSlotTransactionError,
    InvalidPipelineStack,
    RedisClusterException,
)

import config
from txstream.keys import Keys
from txstream.redisconn import connect, resolve
from txstream.runtime import Backoff, Outage

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
# Bytes of a line the subscriber reads at most: no transaction comes near (wire.MAX_LINE_BYTES),
# and a dead letter keeps no more. A longer line is cut, and read whole once, alone, only to
# be hashed: one read of huge entries would hold them all at once.
LINE_CAP = 4096
UNREAD_CHECK = 5.0  # seconds between looks for entries deleted before the group read them
SHOWN_IDS = 10  # lost entry ids a log line names at most
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

    raw: bytes  # the line; only its first LINE_CAP bytes when `whole` is set
    entry_id: str | None = None
    problem: str | None = None  # set when the message is a dead letter before parsing
    partition: int = 0  # the partition (stream, channel) it came from
    # Times the stream handed it out, when more than MAX_DELIVERIES: tried alone, a dead
    # letter only if it cannot be stored (0: not that often).
    over_delivered: int = 0
    whole: tuple[int, str] | None = None  # size and SHA-256 of a line longer than `raw`

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


# How the subscriber reads a partition's stream KEYS[1] as consumer ARGV[2] of group ARGV[1]:
# up to ARGV[3] new entries (ARGV[5] '>'), or its own pending ones ('0'), or ('claim') those
# pending on any consumer for over ARGV[6] ms, from cursor ARGV[7] (XAUTOCLAIM). Each line
# comes back cut to ARGV[4] bytes, so a read is bounded whatever was appended. Entries
# deleted from the stream while pending (trimmed) come back as ids: XAUTOCLAIM takes them off
# the pending list itself, XACK does for our own; they are counted as `lost` in the hash
# KEYS[2], if given. Returns {cursor, {id, line (false: none) ...}, {id, whole size ...} of the
# lines cut, {id, {fields}} of entries without a line, the deliveries of each entry taken
# over, the lost ids, the error that kept them from being counted (or false)}.
_READ = """
local group, consumer, count, cap, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local cursor, entries, lost = '0-0', {}, {}
if mode == 'claim' then
  local reply = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[6], ARGV[7], 'COUNT', count)
  cursor, entries, lost = reply[1], reply[2], reply[3]
else
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                           'STREAMS', KEYS[1], mode)
  if reply then entries = reply[1][2] end
end
local lines, cut, fieldless, deliveries, gone = {}, {}, {}, {}, {}
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  if not fields then  -- pending on us, deleted from the stream since
    gone[#gone + 1] = id
  else
    local line = false
    for i = 1, #fields, 2 do
      if fields[i] == 'line' then line = fields[i + 1] break end
    end
    if not line then
      local shown = {}
      for i = 1, math.min(#fields, 16) do shown[i] = string.sub(fields[i], 1, cap) end
      fieldless[#fieldless + 1] = id
      fieldless[#fieldless + 1] = shown
    elseif #line > cap then
      cut[#cut + 1] = id
      cut[#cut + 1] = #line
      line = string.sub(line, 1, cap)
    end
    lines[#lines + 1] = id
    lines[#lines + 1] = line
    if mode == 'claim' then
      local row = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
      deliveries[#deliveries + 1] = row and row[4] or 1
    end
  end
end
for i = 1, #gone, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(gone, i, math.min(i + 999, #gone)))
end
for _, id in ipairs(gone) do lost[#lost + 1] = id end
local uncounted = false
if #lost > 0 and KEYS[2] then
  local counted = redis.pcall('HINCRBY', KEYS[2], 'lost', #lost)
  if type(counted) == 'table' and counted.err then uncounted = counted.err end
end
return {cursor, lines, cut, fieldless, deliveries, lost, uncounted}
"""

# Entries of the stream KEYS[1] deleted before group ARGV[1] read them (trimmed by someone
# else: XTRIM, XADD MAXLEN or MINID; or XDEL), counted once as `lost` in the hash KEYS[2], if
# given. Redis counts the entries ever added to the stream and those the group read: what is
# neither read nor still in the stream after the last entry read is lost. The group's read
# counter is then set to include them, so its lag is the truth again, and nothing is counted
# twice. Cheap to tell only when the group has read everything, or nothing that it read is
# left in the stream; else the number is false (try later). Returns false (no stream, no
# group) or {lost, the group's last-delivered-id, the latest entry deleted after it (XDEL;
# false: none), the error that kept them from being counted (or false)}.
_UNREAD = """
local function fields(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end
local function before(a, b)  -- stream id a < b, compared as text: ids may pass 2^53
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return false end
local stream, group = fields(redis.call('XINFO', 'STREAM', KEYS[1])), nil
for _, row in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = fields(row)
  if info['name'] == ARGV[1] then group = info end
end
if not group then return false end
local last, read = group['last-delivered-id'], group['entries-read']
local deleted = before(last, stream['max-deleted-entry-id']) and stream['max-deleted-entry-id']
local after  -- entries in the stream after `last`
if not before(last, stream['last-generated-id']) then
  after = 0
elseif stream['length'] == 0 or before(last, stream['recorded-first-entry-id']) then
  after = stream['length']
end
if not read or not after then return {false, last, deleted, false} end
local lost = stream['entries-added'] - read - after
local uncounted = false
if lost > 0 then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', read + lost)
  if KEYS[2] then
    local counted = redis.pcall('HINCRBY', KEYS[2], 'lost', lost)
    if type(counted) == 'table' and counted.err then uncounted = counted.err end
  end
end
return {math.max(lost, 0), last, deleted, uncounted}
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
    lost: int  # stream entries found deleted before they were stored
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
            client,
            keys.streams,
            settings.group,
            settings.claim_idle_ms,
            settings.max_deliveries,
            [keys.counts(p) for p in range(keys.partitions)],
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
        self.lost = 0  # what it loses is never seen: counted as `disconnects`
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
    returned flagged (`Message.over_delivered`), for the subscriber to try alone.

    Reads go through the script `_READ`, which cuts every line to LINE_CAP bytes. Entries
    deleted from the stream before they were stored are LOST: each is logged, counted in
    `lost` and, with `counts` (each partition's counts hash), in Redis for the web app.
    A stream key of another type is logged once, and read again with backoff.
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: str | Sequence[str],
        group: str,
        claim_idle_ms: int,
        max_deliveries: int,
        counts: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.streams = [streams] if isinstance(streams, str) else list(streams)
        self.counts = list(counts)  # by partition; empty: lost entries not counted in Redis
        self.group = group
        self.name = consumer_name()
        self.stale_consumer_ms = STALE_CONSUMER_MS
        self._delete_stale = client.register_script(_DELETE_STALE)
        self._read_script = client.register_script(_READ)
        self._unread_script = client.register_script(_UNREAD)
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.durable = True  # entries stay pending until acknowledged
        self.disconnects = 0  # always 0: the subscriber counts the outages it meets
        self.claimed = 0
        self.lost = 0  # entries deleted from the stream before they were stored
        n = len(self.streams)
        self._claim_cursor = ["0-0"] * n
        self._next_claim = [0.0] * n
        self._next_unread_check = [0.0] * n
        self._own_pending_first = [False] * n
        self._retry_at = [0.0] * n  # when to try a failing partition again
        self._outages = [Outage(f"redis ({stream})") for stream in self.streams]
        self._wrong_type: list[Backoff | None] = [None] * n  # set while not a stream
        self._told_deleted: list[bytes | None] = [None] * n  # the latest XDEL reported
        self._turn = 0  # the partition read first next time: each gets its turn
        # A BLOCK as long as the socket timeout makes a quiet stream look like a dead
        # server (a known redis-py trap): block for half of it at most.
        socket_timeout = _socket_timeout(client)
        self._max_block = socket_timeout / 2 if socket_timeout else 1.0

    def start(self) -> None:
        """Create the group on each stream if missing (a new group reads from the start)."""
        for p in range(len(self.streams)):
            self._create_group(p)

    def _create_group(self, p: int) -> None:
        stream = self.streams[p]
        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %r on stream %r", self.group, stream)
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                self._not_a_stream(p)
            elif "BUSYGROUP" not in str(exc):
                raise

    def describe(self) -> str:
        return f"{_named('stream', self.streams)} as {self.name!r} in group {self.group!r}"

    def read(self, max_count: int, timeout: float) -> list[Message]:
        """Entries taken over from dead consumers, or else new ones (blocking up to
        `timeout`): from the partitions in turn, up to `max_count` in all.

        One stream: its errors are raised. Several: a partition whose master cannot serve
        (failing over) waits its backoff, logged, while the others are read; an error is
        raised only when none could be read. A stream key of another type waits its
        backoff, on either.
        """
        n = len(self.streams)
        if n == 1:
            if self._waiting(0, timeout):
                return []
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
            self._waiting(self._retry_at.index(min(self._retry_at)), timeout)
            return []
        return self._read_partition(ready[0], max_count, min(timeout, POLL_BLOCK))

    def _waiting(self, p: int, timeout: float) -> bool:
        """Whether partition `p` waits its backoff: then sleep for it, up to `timeout`."""
        wait = self._retry_at[p] - time.monotonic()
        if wait > 0:
            time.sleep(max(0, min(timeout, wait)))
        return wait > 0

    def _read_partition(self, p: int, max_count: int, timeout: float | None) -> list[Message]:
        try:
            messages = self._read(p, max_count, timeout)
        except REDIS_ERRORS:
            self._own_pending_first[p] = True
            raise
        except redis.ResponseError as exc:
            if _moved(exc):
                self._own_pending_first[p] = True
                raise
            if "WRONGTYPE" in str(exc):
                self._not_a_stream(p)
                return []
            if "NOGROUP" not in str(exc):
                raise
            stream = self.streams[p]
            log.error("stream %r or group %r is gone: creating them", stream, self.group)
            self._create_group(p)
            return []
        if self._wrong_type[p] is not None:
            self._wrong_type[p] = None
            log.warning("stream %r is a stream again: reading it", self.streams[p])
        return messages

    def _not_a_stream(self, p: int) -> None:
        """The stream key holds another type: say so once, then try again with backoff.
        Nothing can be read or acknowledged meanwhile; nothing is dropped."""
        stream = self.streams[p]
        if self._wrong_type[p] is None:
            self._wrong_type[p] = Backoff()
            kind = self.client.type(stream)
            log.error(
                "stream key %r holds a %s, not a stream: nothing can be read from it or "
                "acknowledged in it until someone deletes it (the group is then created "
                "again); trying again with backoff",
                stream,
                kind.decode() if isinstance(kind, bytes) else kind,
            )
        self._retry_at[p] = time.monotonic() + self._wrong_type[p].delay()

    def _read(self, p: int, max_count: int, timeout: float | None) -> list[Message]:
        """Up to `max_count` entries of partition `p`; a `timeout` of None: without waiting."""
        stream = self.streams[p]
        if self._own_pending_first[p]:  # after an error: a failover?
            refresh_slots(self.client)
        now = time.monotonic()
        if now >= self._next_unread_check[p]:
            self._next_unread_check[p] = now + UNREAD_CHECK
            self._count_unread_lost(p)
        if now >= self._next_claim[p]:
            claimed = self._claim(p, max_count)
            if claimed:
                return claimed
        if self._own_pending_first[p]:
            # After a lost connection, entries handed to us may never have arrived:
            # read our own pending list first, instead of waiting CLAIM_IDLE_MS.
            self._own_pending_first[p] = False
            return self._run_read(p, max_count, "0")[1]
        messages = self._run_read(p, max_count, ">")[1]
        if messages or timeout is None:
            return messages
        # Nothing yet: wait for the next entry, one only, as the script cannot wait.
        block = max(int(min(timeout, self._max_block) * 1000), 1)
        reply = master_of(self.client, stream).xreadgroup(
            self.group, self.name, {stream: ">"}, count=1, block=block
        )
        return [
            self._whole_entry(p, entry_id, fields)
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
        cursor, messages = self._run_read(
            p, max_count, "claim", self.claim_idle_ms, self._claim_cursor[p]
        )
        self._claim_cursor[p] = cursor
        if cursor in (b"0-0", "0-0"):  # scanned every pending entry: pause a while
            self._next_claim[p] = time.monotonic() + min(1.0, self.claim_idle_ms / 2000)
        if messages:
            self.claimed += len(messages)
            log.warning(
                "took over %d entries of %r pending on another consumer for over %d ms",
                len(messages),
                stream,
                self.claim_idle_ms,
            )
        return messages

    def _run_read(self, p: int, max_count: int, mode: str, *claim) -> tuple[bytes, list[Message]]:
        """The script `_READ` in `mode` on partition `p`: its cursor (claims), its messages."""
        keys = [self.streams[p], *self.counts[p : p + 1]]
        args = [self.group, self.name, max_count, LINE_CAP, mode, *claim]
        reply = self._run(self._read_script, keys, args)
        cursor, lines, cut, fieldless, deliveries, lost, uncounted = reply
        if lost:
            how = f"were deleted (trimmed) while pending, before they were stored: {_some(lost)}"
            self._lost(p, len(lost), how, uncounted)
        if not (cut or fieldless or deliveries):  # the usual case, kept quick
            return cursor, [
                Message(lines[i + 1], lines[i].decode(), None, p) for i in range(0, len(lines), 2)
            ]
        sizes = dict(zip(cut[::2], cut[1::2], strict=True))
        shown = dict(zip(fieldless[::2], fieldless[1::2], strict=True))
        messages = []
        for k in range(0, len(lines), 2):
            entry_id, line = lines[k], lines[k + 1]
            over = deliveries[k // 2] if deliveries else 1
            over = over if over > self.max_deliveries else 0
            if entry_id in shown:
                fields = dict(zip(shown[entry_id][::2], shown[entry_id][1::2], strict=True))
                message = _fieldless(p, entry_id, fields, over)
            elif entry_id in sizes:
                message = self._cut_line(p, entry_id, line, over)
            else:
                message = Message(line, entry_id.decode(), None, p, over)
            if message is not None:
                messages.append(message)
        return cursor, messages

    def _run(self, script: Script, keys: list[str], args: list) -> object:
        """Run `script` on the node that serves `keys`. Not `script(keys, args)`: missing
        there, redis-py's cluster client loads a script on every master, and one master
        down would then fail the reading of every partition."""
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            master_of(self.client, keys[0]).script_load(script.script)
            return self.client.evalsha(script.sha, len(keys), *keys, *args)

    def _cut_line(self, p: int, entry_id: bytes, start: bytes, over: int) -> Message | None:
        """A message of a line longer than LINE_CAP: its start, and the size and SHA-256 of
        the whole, read alone (at most one such line is in memory at a time)."""
        stream = self.streams[p]
        found = self.client.xrange(stream, entry_id, entry_id)
        line = found[0][1].get(LINE_FIELD) if found else None
        if line is None:  # deleted since: our own pending list tells, and counts it
            self._own_pending_first[p] = True
            return None
        whole = (len(line), hashlib.sha256(line).hexdigest())
        return Message(start, entry_id.decode(), None, p, over, whole)

    def _whole_entry(self, p: int, entry_id: bytes, fields: dict) -> Message:
        """A message of an entry read whole (the blocking read: one entry)."""
        line = fields.get(LINE_FIELD)
        if line is None:
            return _fieldless(p, entry_id, fields, 0)
        if len(line) <= LINE_CAP:
            return Message(line, entry_id.decode(), None, p)
        whole = (len(line), hashlib.sha256(line).hexdigest())
        return Message(line[:LINE_CAP], entry_id.decode(), None, p, 0, whole)

    def _count_unread_lost(self, p: int) -> None:
        """Count (script `_UNREAD`) the entries of partition `p` deleted before the group
        read them; an XDEL that Redis cannot count is logged once."""
        keys = [self.streams[p], *self.counts[p : p + 1]]
        reply = self._run(self._unread_script, keys, [self.group])
        if not reply:
            return
        lost, last, deleted, uncounted = reply
        if lost:
            how = f"were deleted before group {self.group!r} read them (past {last.decode()})"
            self._lost(p, lost, how, uncounted)
        elif lost is None and deleted and self._told_deleted[p] != deleted:
            self._told_deleted[p] = deleted
            log.error(
                "LOST: entries of stream %r not yet read by group %r were deleted (XDEL, "
                "the latest %s); how many cannot be told yet",
                self.streams[p],
                self.group,
                deleted.decode(),
            )

    def _lost(self, p: int, n: int, how: str, uncounted: bytes | None) -> None:
        """Log and count `n` entries deleted from partition `p` before they were stored."""
        self.lost += n
        log.error("LOST: %d entries of stream %r %s", n, self.streams[p], how)
        if uncounted:
            error = uncounted.decode("utf-8", "replace")
            log.error("could not count them in %r: %s", self.counts[p], error)


def _fieldless(p: int, entry_id: bytes, fields: dict[bytes, bytes], over: int) -> Message:
    """A message of an entry without a `line` field: a dead letter, its fields described."""
    problem = "stream entry has no 'line' field"
    return Message(_describe_fields(fields), entry_id.decode(), problem, p, over)


def _some(ids: list[bytes]) -> str:
    """Entry ids for a log line: the first SHOWN_IDS, and how many more."""
    shown = ", ".join(i.decode() for i in ids[:SHOWN_IDS])
    more = len(ids) - SHOWN_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def _describe_fields(fields: dict[bytes, bytes]) -> bytes:
    """The raw form of an entry without a `line` field, kept in its dead letter."""
    return repr({k.decode("utf-8", "backslashreplace"): v for k, v in fields.items()}).encode()


def _socket_timeout(client: redis.Redis) -> float | None:
    """The socket timeout a client's connections have (on a cluster: its nodes')."""
    if isinstance(client, RedisCluster):
        return client.nodes_manager.connection_kwargs.get("socket_timeout")
    return client.connection_pool.connection_kwargs.get("socket_timeout")
