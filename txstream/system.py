"""The operator's view of the whole system (GET /api/system and the page /system).

The subscribers' heartbeats, the stream and its consumer group (each partition's, and
their totals, with the entries lost: deleted from the stream before they were stored), the
dead letters, the aggregates' layout, whether Redis and the database answer, and whether
reads go to the replica. Whatever one server cannot tell is left out
(None) and that server is reported "down": the rest is still shown. The database here is
the primary (DATABASE_URL), which the subscribers write to: a replica that answers must not
hide that it is down.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import datetime

import redis
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from txstream import queries, redisconn, replica
from txstream.aggregates import KnownLayout
from txstream.heartbeats import read_subscribers, shown
from txstream.keys import Keys
from txstream.live import _count
from txstream.times import utcnow
from txstream.wrongtype import is_wrong_type

log = logging.getLogger(__name__)


def status(
    client: redis.Redis,
    keys: Keys,
    engine: Engine,
    layout: KnownLayout,
    transport: str,
    group: str,
    now: datetime,
) -> dict:
    """What the System page shows, as JSON-ready values (see txstream.openapi `System`)."""
    result: dict = {"redis": "ok", "database": "ok", "transport": transport}
    try:
        subscribers, more = read_subscribers(client, keys, now)
        result["subscribers"] = [dataclasses.asdict(s) for s in subscribers]
        result["more_subscribers"] = more
        result["stream"] = _stream(client, keys, group) if transport == "stream" else None
        result["dead_letters"] = _dead_letters(client, keys)
    except redisconn.ERRORS as exc:
        log.error("system: Redis is down: %s", exc)
        result.update(
            redis="down", subscribers=None, more_subscribers=None, stream=None, dead_letters=None
        )
    try:
        known = queries.read(engine, lambda conn: (queries.ping(conn), layout.get(conn))[1])
    except SQLAlchemyError as exc:
        log.error("system: the database is down: %s", exc)
        result["database"], known = "down", None
    result["window"] = (
        {"window_seconds": known.window_seconds, "bucket_seconds": known.bucket_seconds}
        if known
        else None
    )
    return result


def _dead_letters(client: redis.Redis, keys: Keys) -> int | None:
    """How many dead letters the list holds; None when its key holds another type."""
    try:
        return client.llen(keys.dead)
    except redis.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        log.error("system: the dead-letter key %s holds another type than a list", keys.dead)
        return None


def _stream(client: redis.Redis, keys: Keys, group: str) -> dict:
    """The stream's partitions, each one's length, its group's lag and pending entries and
    the entries lost; their totals; and the group's consumers, their pending entries added
    up."""
    partitions = _partitions(client, keys, group)
    with client.pipeline(transaction=False) as pipe:
        for partition in partitions:
            if partition["group_exists"]:
                pipe.xinfo_consumers(partition["name"], group)
        listed = pipe.execute()
    consumers: dict[str, dict] = {}  # a consumer reads every partition: one row each
    for consumer in (c for cs in listed for c in cs):
        name = shown(consumer["name"])
        row = consumers.setdefault(name, {"name": name, "pending": 0, "idle_ms": consumer["idle"]})
        row["pending"] += consumer["pending"]
        row["idle_ms"] = min(row["idle_ms"], consumer["idle"])
    return {
        "name": keys.stream,
        "length": sum(p["length"] for p in partitions),
        "group": group,
        "group_exists": all(p["group_exists"] for p in partitions),
        "lag": _total(p["lag"] for p in partitions),
        "pending": _total(p["pending"] for p in partitions),
        "lost": _total(p["lost"] for p in partitions),
        "consumers": list(consumers.values()),
        "partitions": partitions,
    }


def _partitions(client: redis.Redis, keys: Keys, group: str) -> list[dict]:
    """Each stream's name, length, its group's lag and pending entries (None: no group),
    and the entries the subscribers found lost (counts hash `lost`; None: unreadable)."""
    with client.pipeline(transaction=False) as pipe:
        for p, stream in enumerate(keys.streams):
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            pipe.hmget(keys.counts(p), ["lost"])
        replies = pipe.execute(raise_on_error=False)
    partitions = []
    for stream, length, groups, lost in zip(
        keys.streams, replies[::3], replies[1::3], replies[2::3], strict=True
    ):
        if isinstance(length, Exception):  # a key of another type: Redis cannot tell
            raise length
        if isinstance(groups, redis.ResponseError):  # no such stream (yet)
            groups = []
        found = next((g for g in groups if shown(g["name"]) == group), None)
        partitions.append(
            {
                "name": stream,
                "length": length,
                "group_exists": found is not None,
                "lag": found.get("lag") if found else None,
                "pending": found["pending"] if found else None,
                "lost": None if isinstance(lost, Exception) else _count(lost[0]),
            }
        )
    return partitions


def _total(values: Iterable[int | None]) -> int | None:
    """The sum of every partition's value; None when one of them is unknown."""
    values = list(values)
    return None if None in values else sum(values)


def app_status() -> dict:
    """`status` of the current app's Redis and database, judged at the current time, and
    where its reads go (txstream.replica)."""
    config = current_app.config
    found = status(
        config["REDIS"],
        config["KEYS"],
        config["ENGINE"],
        config["LAYOUT"],
        config["TRANSPORT"],
        config["GROUP"],
        utcnow(),  # heartbeats are real time, whatever CLOCK says
    )
    return {**found, "replica": replica.status()}
