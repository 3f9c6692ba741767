"""The web app on a Redis Cluster with partitions: every page and API route reads the
partitioned, hash-tagged keys (txstream.keys) without a cross-slot command, and adds the
partitions' counters up; and it starts while Redis is down, whatever kind it is.

The cluster is one node holding every slot (tests.helpers.OneNodeCluster): a command or a
script on keys of two slots fails there as on any cluster.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import timedelta
from decimal import Decimal

import fakeredis
import pytest
from jsonschema_rs import Draft202012Validator

from tests.helpers import TEST_SECRET_KEY, line, signed_in_client
from txstream import openapi, tokens
from txstream.keys import Keys
from txstream.rebuild_redis import ALL, RedisRebuild
from txstream.store import RATE_BUCKET, Store, dead_letter, rate_bucket
from txstream.testing import assert_recent_lists_match_db
from txstream.times import format_time, from_micros, utcnow
from txstream.transaction import to_json_text
from txstream.wire import parse

PARTITIONS = 3
GROUP = "store"
WINDOW_HOURS = 6
# The messages of a cross-slot command: Redis's, and redis-py's cluster client's own.
CROSS_SLOT = ("CROSSSLOT", "same slot", "non local key")


def create_app(test_config: dict):
    from app import create_app  # here, not at the top: importing `app` builds an app

    return create_app({"TESTING": True, "SECRET_KEY": TEST_SECRET_KEY, **test_config})


@pytest.fixture
def partitioned(monkeypatch):
    """STREAM_PARTITIONS=3, and REDIS_CLUSTER unset: the app asks Redis."""
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    monkeypatch.setenv("STREAM_PARTITIONS", str(PARTITIONS))


@pytest.fixture
def cluster_app_of(one_node_cluster, sqlite_engine, key_prefix, partitioned):
    """Makes the web app on the one-node cluster (found to be one), stream transport, with
    more settings on top."""

    def make(**extra):
        return create_app(
            {
                "ENGINE": sqlite_engine,
                "REDIS_URL": one_node_cluster.url,
                "KEY_PREFIX": key_prefix,
                "TRANSPORT": "stream",
                "GROUP": GROUP,
                "WINDOW_HOURS": Decimal(WINDOW_HOURS),
                **extra,
            }
        )

    return make


@pytest.fixture
def cluster_app(cluster_app_of):
    """The web app on the one-node cluster."""
    return cluster_app_of()


def seed_rows(engine, *lines: str) -> list:
    """Rows and window totals in the database; their Redis side goes to a throwaway fake
    Redis (the cluster's keys are written by each test, as the subscribers write them)."""
    txns = [parse(text) for text in lines]
    Store(engine, fakeredis.FakeRedis(), Keys("unused:"), WINDOW_HOURS * 3600).store(txns)
    return txns


def seed_recent(client, keys: Keys, txns) -> None:
    """Each user's recent list, newest first, items as txstream.recent writes them; and the
    markers a subscriber writes on a new database (txstream.rebuild_redis)."""
    for tx in sorted(txns, key=lambda tx: (tx.ts, tx.txn_id)):
        client.lpush(keys.recent(tx.user_id), to_json_text(tx))
    for partition in range(keys.partitions):
        client.set(keys.derived(partition), ALL)
    client.set(keys.dead_since, ALL)


def seed_stream(client, keys: Keys, partition: int, entries: int, delivered: int) -> None:
    """A partition's stream with the group, `delivered` of its entries pending on `sub-1`."""
    stream = keys.stream_of(partition)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(entries):
        client.xadd(stream, {"line": f"{partition},1.00,1700000000,e{partition}-{i}"})
    if delivered:
        client.xreadgroup(GROUP, "sub-1", {stream: ">"}, count=delivered)


def documented_routes(app, user_id: int) -> dict[str, dict | None]:
    """Every route of the OpenAPI document, `user_id` filled in, and the JSON schema of its
    200 answer (None: not JSON)."""
    spec = openapi.document(app.config["WINDOW_HOURS"])
    routes = {}
    for route, methods in spec["paths"].items():
        content = methods["get"]["responses"]["200"].get("content", {})
        schema = content.get("application/json", {}).get("schema")
        schema = schema and {**schema, "components": spec["components"]}
        routes[route.replace("{user_id}", str(user_id))] = schema
    return routes


def assert_no_cross_slot(caplog) -> None:
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not any(word in logged for word in CROSS_SLOT), logged


@pytest.mark.services
def test_every_page_and_route_reads_the_partitions_of_a_cluster(cluster_app, caplog):
    caplog.set_level(logging.DEBUG)
    keys = cluster_app.config["KEYS"]
    assert (keys.tagged, keys.partitions) == (True, PARTITIONS)  # the cluster was found
    redis = cluster_app.config["REDIS"]
    now = utcnow()
    txns = seed_rows(
        cluster_app.config["ENGINE"],
        *(
            line(u, f"{u}.25", now - timedelta(minutes=k), f"u{u}-{k}")
            for u in (1, 2, 3)
            for k in (1, 2)
        ),
    )
    seed_recent(redis, keys, txns)
    assert {keys.partition_of(u) for u in (1, 2, 3)} == {0, 1, 2}

    # Ingest counters in two partitions, in two buckets of the last 15 minutes.
    last = rate_bucket(time.time())
    older, newer = last - 5 * RATE_BUCKET, last - 3 * RATE_BUCKET
    redis.set(keys.rate(older, 0), 5)
    redis.set(keys.rate(newer, 0), 11)
    redis.set(keys.rate(newer, 2), 7)
    redis.hset(keys.counts(0), mapping={"stored": 10, "duplicates": 1})
    redis.hset(keys.counts(2), mapping={"stored": 32, "duplicates": 2})
    letters = [json.dumps(dead_letter(f"bad line {i}", "not a transaction")) for i in range(2)]
    redis.rpush(keys.dead, *letters)
    redis.set(keys.dead_count, len(letters))
    redis.hset(
        keys.subscriber("sub-1"), mapping={"name": "sub-1", "heartbeat_at": format_time(now)}
    )
    redis.zadd(keys.subscribers, {"sub-1": time.time()})
    for partition, (entries, delivered) in enumerate([(4, 1), (0, 0), (6, 2)]):
        seed_stream(redis, keys, partition, entries, delivered)

    client = signed_in_client(cluster_app)
    routes = documented_routes(cluster_app, user_id=2)
    pages = ["/", "/users/1", "/users/2", "/users/3", "/dead-letters", "/system", "/metrics"]
    answers = {path: client.get(path) for path in [*routes, "/api/users/1/recent", *pages]}
    answers["/login"] = cluster_app.test_client().get("/login")
    assert {path: r.status_code for path, r in answers.items()} == dict.fromkeys(answers, 200)
    for path, schema in routes.items():
        if schema is not None:
            Draft202012Validator(schema).validate(answers[path].json)  # as documented
    assert_no_cross_slot(caplog)

    live = answers["/api/live"].json
    assert live["counts"] == {
        "stored": 10 + 32,
        "duplicates": 1 + 2,
        "dead_letters": 2,
        "since": {"duplicates": None, "dead_letters": None},
        "rebuilding": False,
    }
    series = {point["at"]: point["stored"] for point in live["rate"]["series"]}
    at = {bucket: format_time(from_micros(bucket * 10**6)) for bucket in (older, newer)}
    assert (series[at[older]], series[at[newer]]) == (5, 11 + 7)
    assert sum(series.values()) == 5 + 11 + 7
    assert live["subscribers"] == 1

    for user in (1, 2):  # users of two partitions: each list is in its partition's slot
        newest_first = sorted(
            (tx for tx in txns if tx.user_id == user), reverse=True, key=lambda tx: tx.ts
        )
        shown = answers[f"/api/users/{user}/recent"].json["items"]
        assert [item["txn_id"] for item in shown] == [tx.txn_id for tx in newest_first]
    for user in (1, 2, 3):  # the user page's recent list
        assert '"recent-heading">Recent 2<' in answers[f"/users/{user}"].get_data(as_text=True)

    stream = answers["/api/system"].json["stream"]
    assert [p["name"] for p in stream["partitions"]] == keys.streams
    assert [(p["length"], p["pending"]) for p in stream["partitions"]] == [(4, 1), (0, 0), (6, 2)]
    assert (stream["length"], stream["pending"], stream["lag"]) == (10, 3, 3 + 0 + 4)
    assert stream["consumers"] == [
        {"name": "sub-1", "pending": 3, "idle_ms": stream["consumers"][0]["idle_ms"]}
    ]
    page = answers["/system"].get_data(as_text=True)
    assert "3 partitions" in page and all(name in page for name in keys.streams)
    assert answers["/api/dead-letters"].json["items"][0]["raw"] == "bad line 1"
    assert "bad line 0" in answers["/dead-letters"].get_data(as_text=True)

    redis.delete(keys.stream_of(1))  # a partition whose stream is not there (yet)
    stream = client.get("/api/system").json["stream"]
    assert stream["partitions"][1] == {
        "name": keys.stream_of(1),
        "length": 0,
        "group_exists": False,
        "lag": None,
        "pending": None,
        "lost": 0,
    }
    assert (stream["length"], stream["group_exists"], stream["pending"]) == (10, False, None)
    assert stream["consumers"][0]["pending"] == 3
    assert_no_cross_slot(caplog)


@pytest.mark.services
def test_what_one_master_lost_is_rebuilt_in_its_partitions_slot(cluster_app, caplog):
    """The rebuild's scripts and the web app's read of a marker with a list each touch one
    partition's slot; `flask --app app rebuild-redis` runs on a cluster too."""
    caplog.set_level(logging.DEBUG)
    keys, redis = cluster_app.config["KEYS"], cluster_app.config["REDIS"]
    engine = cluster_app.config["ENGINE"]
    now = utcnow()
    ago = [(u, timedelta(minutes=k), f"u{u}-{k}") for u in range(1, 7) for k in range(7)]
    seed_rows(engine, *(line(u, "1.00", now - before, txn_id) for u, before, txn_id in ago))
    rebuild = RedisRebuild(engine, redis, keys, "subscriber-a")
    assert rebuild.check().users == 6
    lost = [k for k in redis.scan_iter(match=f"{keys.prefix}*") if keys.tag(1).encode() in k]
    redis.delete(*lost)  # partition 1's master lost its data (one by one: no CROSSSLOT)

    client = signed_in_client(cluster_app)
    from_database = [client.get(f"/api/users/{u}/recent").json for u in range(1, 7)]
    assert rebuild.check().partitions == [1]
    assert_recent_lists_match_db(engine, redis, keys)
    assert [client.get(f"/api/users/{u}/recent").json for u in range(1, 7)] == from_database
    result = cluster_app.test_cli_runner().invoke(args=["rebuild-redis"])
    assert result.exit_code == 0, result.output
    assert "Done: the recent lists of 6 users, 42 rows counted (partitions 0, 1, 2)" in (
        result.output
    )
    assert client.get("/api/live").json["counts"]["stored"] == 42
    assert_no_cross_slot(caplog)


@pytest.mark.services
def test_rate_limits_and_revocations_on_a_cluster(cluster_app_of, caplog):
    """The rate limiter's script reads the revocation epoch with the counters (one slot);
    revoke-token sets the epoch that the app reads."""
    app = cluster_app_of(RATE_LIMIT="3/minute")
    api = app.test_client()
    api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens.create(app.config['ENGINE'], 'c')}"

    assert [api.get("/api/transactions").status_code for _ in range(4)] == [200, 200, 200, 429]
    revoked = app.test_cli_runner().invoke(args=["revoke-token", "c"])
    assert revoked.exit_code == 0, revoked.output
    assert api.get("/api/transactions").status_code == 401  # not its cached entry's 429
    assert_no_cross_slot(caplog)


def test_the_app_starts_when_redis_cannot_be_asked_and_says_how_to_name_a_cluster(
    sqlite_engine, closed_port, monkeypatch, caplog
):
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    app = create_app({"ENGINE": sqlite_engine, "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"})

    assert not app.config["KEYS"].tagged  # taken for one server: the names of before
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "whether it is a cluster" in warning.getMessage()
    assert "Set REDIS_CLUSTER=1 if it is a Redis Cluster" in warning.getMessage()
    health = app.test_client().get("/healthz")
    assert (health.status_code, health.json) == (503, {"redis": "down", "database": "ok"})
    assert signed_in_client(app).get("/api/live").status_code == 503


@pytest.mark.services
def test_a_cluster_app_starts_while_the_cluster_is_down_and_serves_once_it_is_back(
    one_node_cluster, sqlite_engine, key_prefix, partitioned, monkeypatch, caplog
):
    """REDIS_CLUSTER=1: the cluster client, which asks a node for the slots as it is made,
    is made at the first request that needs it; until the cluster answers, 503s."""
    monkeypatch.setenv("REDIS_CLUSTER", "1")
    one_node_cluster.stop()
    app = create_app(
        {"ENGINE": sqlite_engine, "REDIS_URL": one_node_cluster.url, "KEY_PREFIX": key_prefix}
    )
    client = signed_in_client(app)

    def statuses() -> tuple:
        system = client.get("/system")  # a page: its session is checked in the database
        assert system.status_code == 200  # it says what is down
        shown = re.search(r'<th>Redis</th><td class="(\w+)">', system.get_data(as_text=True))
        return client.get("/healthz").json["redis"], shown[1], client.get("/api/live").status_code

    assert statuses() == ("down", "down", 503)
    one_node_cluster.start()
    assert statuses() == ("ok", "ok", 200)
    one_node_cluster.stop()  # and down again: the cluster client raises no RedisError then
    assert statuses() == ("down", "down", 503)
    assert_no_cross_slot(caplog)
