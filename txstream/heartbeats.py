"""Subscriber heartbeats: who is storing, where, and how fast, as Redis last heard it.

Every subscriber writes a hash `Keys.subscriber(name)` every HEARTBEAT_INTERVAL seconds,
from a thread of its own (so a slow Redis never slows storing), and lists its name in the
sorted set `Keys.subscribers` scored by that time. A hash expires a day after its last
heartbeat, so a subscriber that died vanishes eventually; one that stops cleanly deletes
its own at once. A subscriber is live while its heartbeat is at most LIVE_BEATS
intervals old (`live_subscribers`, `count_live`): the System page shows it, and commands
that must not run beside a subscriber ask it.

Anyone who can write to Redis can fill the index, so every read of it is bounded: at most
SHOWN_SUBSCRIBERS names, the latest, with the count of the rest; a score more than
CLOCK_SKEW seconds ahead of the reader's clock is no heartbeat (ignored, and each beat
removes such scores). A key of another type is replaced by the next beat (logged).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis

from txstream import redisconn
from txstream.keys import Keys
from txstream.runtime import Background
from txstream.times import epoch_seconds, format_time, parse_time, utcnow
from txstream.wrongtype import is_wrong_type, replacing

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0  # seconds between a subscriber's heartbeats
LIVE_BEATS = 3  # live: the last heartbeat is at most this many intervals old
KEEP_SECONDS = 24 * 3600  # a heartbeat is forgotten this long after it was written
CLOCK_SKEW = 60.0  # seconds a heartbeat's time may be ahead of a reader's clock
SHOWN_SUBSCRIBERS = 50  # the latest heartbeats read, at most (the rest are counted)
SHOWN_CHARS = 200  # a field read back is cut to this many characters (hashes can be forged)
FIELDS = ("name", "host", "pid", "transport", "started_at", "heartbeat_at")
FIELDS += ("stored", "rate", "last_commit_at")

Progress = Callable[[], tuple[int, datetime | None]]  # stored so far, the last commit's time


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A heartbeat as read back: text as stored (cut short), numbers when they are numbers."""

    name: str
    host: str
    pid: int | None
    transport: str
    started_at: str
    heartbeat_at: str
    stored: int | None
    rate: float | None
    last_commit_at: str
    live: bool


def read_subscribers(
    client: redis.Redis, keys: Keys, now: datetime, most: int = SHOWN_SUBSCRIBERS
) -> tuple[list[Subscriber], int]:
    """The `most` latest subscribers with a heartbeat kept in Redis, the latest first, and
    how many more the index lists. Two round trips, whatever the index holds."""
    index, latest = keys.subscribers, epoch_seconds(now) + CLOCK_SKEW
    with client.pipeline(transaction=False) as pipe:
        # ZRANGE ... BYSCORE REV: the ACL grants no ZREVRANGEBYSCORE
        pipe.zrange(index, latest, "-inf", desc=True, byscore=True, offset=0, num=most)
        pipe.zcount(index, "-inf", latest)
        names, listed = pipe.execute(raise_on_error=False)
    if is_wrong_type(names):
        log.error("the subscribers' index %s holds another type: showing none", index)
        return [], 0
    for reply in (names, listed):
        if isinstance(reply, Exception):
            raise reply
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.subscriber(shown(name)))
        hashes = pipe.execute(raise_on_error=False)
    found = []
    for name, fields in zip(names, hashes, strict=True):
        if is_wrong_type(fields):
            log.error("heartbeat %s holds another type: left out", keys.subscriber(shown(name)))
        elif isinstance(fields, Exception):
            raise fields
        elif fields:
            found.append(_subscriber(fields, now))
    return found, listed - len(names)


def live_subscribers(client: redis.Redis, keys: Keys, now: datetime) -> list[Subscriber]:
    """The subscribers whose last heartbeat is at most LIVE_BEATS intervals before `now`
    (among the latest SHOWN_SUBSCRIBERS)."""
    return [s for s in read_subscribers(client, keys, now)[0] if s.live]


def count_live(client: redis.Redis, keys: Keys, now: datetime) -> int:
    """How many subscribers the index lists with a heartbeat at most LIVE_BEATS intervals
    before `now` (one command, whatever the index holds)."""
    latest = epoch_seconds(now)
    try:
        return client.zcount(
            keys.subscribers, latest - LIVE_BEATS * HEARTBEAT_INTERVAL, latest + CLOCK_SKEW
        )
    except redis.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        log.error("the subscribers' index %s holds another type: counting none", keys.subscribers)
        return 0


def _subscriber(fields: dict[bytes, bytes], now: datetime) -> Subscriber:
    text = {name: shown(fields.get(name.encode(), b"")) for name in FIELDS}
    try:
        live = is_live(parse_time(text["heartbeat_at"]), now)
    except ValueError:
        live = False  # not a time txstream wrote
    return Subscriber(
        name=text["name"],
        host=text["host"],
        pid=_number(int, text["pid"]),
        transport=text["transport"],
        started_at=text["started_at"],
        heartbeat_at=text["heartbeat_at"],
        stored=_number(int, text["stored"]),
        rate=_number(float, text["rate"]),
        last_commit_at=text["last_commit_at"],
        live=live,
    )


def shown(value: bytes | str) -> str:
    """A value read from Redis as text to show: decoded, cut to SHOWN_CHARS characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text[:SHOWN_CHARS]


def _number(kind: type, text: str) -> int | float | None:
    """`text` as a number of `kind` if it is a plain, finite, non-negative one; else None."""
    if not text or len(text) > 30 or not all(c.isdigit() or c == "." for c in text):
        return None
    try:
        return kind(text)
    except ValueError:
        return None


class Heartbeat:
    """Writes a subscriber's heartbeat every `interval` s in a thread of its own.

    `progress` tells what it has stored; `chores`, if given, is called every
    `chores_interval` s from the same thread (the stream's housekeeping), with the names
    of the live subscribers. Redis errors are logged and the next beat tries again.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        name: str,
        transport: str,
        progress: Progress,
        interval: float = HEARTBEAT_INTERVAL,
        chores: Callable[[set[str]], None] | None = None,
        chores_interval: float = 300.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.name = name
        self.progress = progress
        self.interval = interval
        self.chores = chores
        self.chores_interval = chores_interval
        self.static = {
            "name": name,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "transport": transport,
            "started_at": format_time(utcnow()),
        }
        self._loop = Background(f"heartbeat of {name!r}", self._beat, interval, "heartbeat")
        self._last = (time.monotonic(), 0)
        self._next_chores = time.monotonic()

    def start(self) -> None:
        """Beat now and then every interval, in the background."""
        self._loop.start()

    def stop(self) -> None:
        """Stop beating and delete the heartbeat: this subscriber is gone, not dead."""
        self._loop.stop()
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.subscriber(self.name))
                pipe.zrem(self.keys.subscribers, self.name)
                pipe.execute()
        except redisconn.ERRORS as exc:
            log.warning("could not delete the heartbeat of %r: %s", self.name, exc)

    def _beat(self) -> None:
        """A beat, and the chores when they are due."""
        self.beat()
        if self.chores is not None and time.monotonic() >= self._next_chores:
            self._next_chores = time.monotonic() + self.chores_interval
            now = utcnow()
            self.chores({s.name for s in live_subscribers(self.client, self.keys, now)})

    def beat(self) -> None:
        """Write the heartbeat once: the hash, its expiry, and the index, tidied of
        heartbeats older than KEEP_SECONDS or dated more than CLOCK_SKEW ahead. A key of
        another type is replaced (logged)."""
        now, when = time.monotonic(), utcnow()
        stored, last_commit = self.progress()
        rate = (stored - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, stored)
        fields = {
            **self.static,
            "heartbeat_at": format_time(when),
            "stored": str(stored),
            "rate": f"{rate:.1f}",
            "last_commit_at": format_time(last_commit) if last_commit else "",
        }
        replies = self._write(fields, epoch_seconds(when))
        written = (self.keys.subscriber(self.name),) * 2 + (self.keys.subscribers,) * 3
        wrong = sorted(
            {key for key, reply in zip(written, replies, strict=True) if is_wrong_type(reply)}
        )
        for key in wrong:
            replacing(self.client, key)
            self.client.delete(key)
        if wrong:
            replies = self._write(fields, epoch_seconds(when))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def _write(self, fields: dict[str, str], since: float) -> list:
        """The heartbeat's commands, in one round trip; their replies, errors included."""
        key, index = self.keys.subscriber(self.name), self.keys.subscribers
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, KEEP_SECONDS)
            pipe.zadd(index, {self.name: since})
            pipe.zremrangebyscore(index, "-inf", f"({since - KEEP_SECONDS}")
            pipe.zremrangebyscore(index, f"({since + CLOCK_SKEW}", "+inf")
            return pipe.execute(raise_on_error=False)


def is_live(heartbeat_at: datetime, now: datetime) -> bool:
    """Whether a heartbeat written at `heartbeat_at` is recent enough at `now`."""
    return now - heartbeat_at <= timedelta(seconds=LIVE_BEATS * HEARTBEAT_INTERVAL)
