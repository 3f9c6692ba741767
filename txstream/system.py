"""The operator's view of the whole system (GET /api/system and the page /system).

The subscribers' heartbeats, the stream and its consumer group, the dead letters, the
aggregates' layout, whether Redis and the database answer, and whether reads go to the
replica. Whatever one server cannot tell is left out (None) and that server is reported
"down": the rest is still shown. The database here is the primary (DATABASE_URL), which
the subscribers write to: a replica that answers must not hide that it is down.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

import redis
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from txstream import queries, replica
from txstream.aggregates import KnownLayout
from txstream.heartbeats import read_subscribers, shown
from txstream.keys import Keys
from txstream.times import utcnow

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
        result["subscribers"] = [dataclasses.asdict(s) for s in read_subscribers(client, keys, now)]
        result["stream"] = _stream(client, keys.stream, group) if transport == "stream" else None
        result["dead_letters"] = client.llen(keys.dead)
    except redis.RedisError as exc:
        log.error("system: Redis is down: %s", exc)
        result.update(redis="down", subscribers=None, stream=None, dead_letters=None)
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


def _stream(client: redis.Redis, stream: str, group: str) -> dict:
    """The stream's length and the group's lag, pending entries and consumers."""
    length = client.xlen(stream)
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream (yet)
        groups = []
    found = next((g for g in groups if shown(g["name"]) == group), None)
    consumers = client.xinfo_consumers(stream, group) if found else []
    return {
        "name": stream,
        "length": length,
        "group": group,
        "group_exists": found is not None,
        "lag": found.get("lag") if found else None,
        "pending": found["pending"] if found else None,
        "consumers": [
            {"name": shown(c["name"]), "pending": c["pending"], "idle_ms": c["idle"]}
            for c in consumers
        ],
    }


def app_status() -> dict:
    """`status` of the current app's Redis and database, judged at the current time, and
    where its reads go (txstream.replica)."""
    config = current_app.config
    found = status(
        config["REDIS"],
        Keys(config["KEY_PREFIX"], config["STREAM"]),
        config["ENGINE"],
        config["LAYOUT"],
        config["TRANSPORT"],
        config["GROUP"],
        utcnow(),  # heartbeats are real time, whatever CLOCK says
    )
    return {**found, "replica": replica.status()}
