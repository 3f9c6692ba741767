"""Subscriber heartbeats: who is storing, where, and how fast, as Redis last heard it.

Every subscriber writes a hash `Keys.subscriber(name)` every HEARTBEAT_INTERVAL seconds,
from a thread of its own (so a slow Redis never slows storing), and lists its name in the
sorted set `Keys.subscribers` scored by that time. A hash expires a day after its last
heartbeat, so a subscriber that died vanishes eventually; one that stops cleanly deletes
its own at once. A subscriber is live while its heartbeat is at most LIVE_BEATS
intervals old (`live_subscribers`): the System page shows it, and commands that must not
run beside a subscriber ask it.
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

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0  # seconds between a subscriber's heartbeats
LIVE_BEATS = 3  # live: the last heartbeat is at most this many intervals old
KEEP_SECONDS = 24 * 3600  # a heartbeat is forgotten this long after it was written
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


def read_subscribers(client: redis.Redis, keys: Keys, now: datetime) -> list[Subscriber]:
    """The subscribers with a heartbeat kept in Redis, the latest heartbeat first."""
    names = client.zrange(keys.subscribers, 0, -1)[::-1]  # ZRANGE: the ACL grants no ZREVRANGE
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.subscriber(shown(name)))
        hashes = pipe.execute()
    return [_subscriber(fields, now) for fields in hashes if fields]


def live_subscribers(client: redis.Redis, keys: Keys, now: datetime) -> list[Subscriber]:
    """The subscribers whose last heartbeat is at most LIVE_BEATS intervals before `now`."""
    return [s for s in read_subscribers(client, keys, now) if s.live]


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
        """Write the heartbeat once: the hash, its expiry, and the index."""
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
        key, since = self.keys.subscriber(self.name), epoch_seconds(when)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, KEEP_SECONDS)
            pipe.zadd(self.keys.subscribers, {self.name: since})
            pipe.zremrangebyscore(self.keys.subscribers, "-inf", f"({since - KEEP_SECONDS}")
            pipe.execute()


def is_live(heartbeat_at: datetime, now: datetime) -> bool:
    """Whether a heartbeat written at `heartbeat_at` is recent enough at `now`."""
    return now - heartbeat_at <= timedelta(seconds=LIVE_BEATS * HEARTBEAT_INTERVAL)
