"""Redis users (deploy/redis.acl): each process works with its own user, and can do no more.

A private redis-server runs the shipped ACL file, each placeholder password replaced by a
new one. The processes use the names that the file grants: key prefix `txstream:`,
channel and stream `transactions`, group `store` (the defaults).
"""

from __future__ import annotations

import pytest
import redis

from tests.helpers import TEST_DATABASE_URL
from txstream import tokens
from txstream.deadletters import DeadLetters
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.ratelimit import FixedWindows
from txstream.rebuild_redis import RedisRebuild
from txstream.recent import RecentLists
from txstream.store import Store
from txstream.testing import (
    EMITTER_USER,
    SUBSCRIBER_USER,
    WEB_USER,
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    emitter_args,
    wait_for_log,
    wait_until_stored,
)
from txstream.transaction import Transaction, to_json_text

pytestmark = pytest.mark.services

PREFIX = "txstream:"
STREAM = "transactions"  # and the channel
NAMES = {"KEY_PREFIX": PREFIX, "CHANNEL": STREAM, "STREAM": STREAM, "GROUP": "store"}
COUNT, USERS, SEED = 300, 20, 11
FORGED = "1,1000000.00,1700000000,forged"
# Redis's answers to a refused command: at top level, and inside a script
REFUSED = r"no permissions|can't run|can't access"


def client_of(server, user: str) -> redis.Redis:
    """A client of `server` logged in as `user`."""
    return redis.Redis.from_url(server.url_for(user))


def refusals(server) -> list[dict]:
    """What the server refused so far (ACL LOG). CLIENT SETINFO, which redis-py tries as it
    connects and gets on without, is not txstream's."""
    return [e for e in server.client().acl_log() if e["object"] != "client|setinfo"]


@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_each_process_works_with_its_own_user(acl_redis, mysql_engine, run, transport):
    env = {
        **NAMES,
        "DATABASE_URL": TEST_DATABASE_URL,
        "TRANSPORT": transport,
        "WINDOW_HOURS": "6",
        "BATCH_INTERVAL_MS": "50",
        "CLAIM_IDLE_MS": "200",
    }
    admin = acl_redis.client()
    if transport == "stream":  # a bad line left pending by a subscriber that died
        admin.xgroup_create(STREAM, "store", id="0", mkstream=True)
        admin.xadd(STREAM, {"line": "not a transaction"})
        admin.xreadgroup("store", "gone", {STREAM: ">"})
    subscriber = run(
        "sub_and_store.py", env={**env, "REDIS_URL": acl_redis.url_for(SUBSCRIBER_USER)}
    )
    wait_for_log(subscriber, r"reading .*; waiting for transactions")
    if transport == "pubsub":
        admin.publish(STREAM, "not a transaction")
    emitter = run(
        *emitter_args(COUNT, USERS, SEED, rate=0),
        env={**env, "REDIS_URL": acl_redis.url_for(EMITTER_USER)},
    )
    assert emitter.wait() == 0, emitter.output
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    wait_until(lambda: admin.llen("txstream:dead") == 1, 20, "the dead letter")
    wait_until(lambda: admin.zcard(Keys(PREFIX).subscribers) == 1, 20, "its heartbeat")
    assert subscriber.stop() == 0, subscriber.output  # stores and acknowledges, then exits
    assert_stored_exactly(mysql_engine, emitted(COUNT, USERS, SEED))
    if transport == "stream":
        assert admin.xpending(STREAM, "store")["pending"] == 0

    from app import create_app  # here, not at the top: importing `app` builds an app

    web = create_app(
        {
            "TESTING": True,
            "ENGINE": mysql_engine,
            "REDIS_URL": acl_redis.url_for(WEB_USER),
            "KEY_PREFIX": PREFIX,
            "TRANSPORT": transport,
        }
    )
    assert web.test_client().get("/healthz").json == {"redis": "ok", "database": "ok"}
    assert_recent_lists_match_db(mysql_engine, web.config["REDIS"], PREFIX)
    api = web.test_client()
    api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens.create(mysql_engine, 'acl')}"
    assert [api.get("/api/users/1/recent").status_code for _ in range(2)] == [200, 200]
    system = api.get("/api/system").json  # heartbeats, stream, dead letters: read only
    assert (system["redis"], system["subscribers"], system["dead_letters"]) == ("ok", [], 1)
    if transport == "stream":
        assert system["stream"]["length"] == COUNT + 1 and system["stream"]["pending"] == 0
    (letter,) = api.get("/api/dead-letters").json["items"]  # the web user reads them
    for _ in range(2):  # the second answer comes from the top users' cache
        dashboard = api.get("/api/live")  # counters, rankings, the cache of the top users
        assert dashboard.status_code == 200, dashboard.json
    assert dashboard.json["counts"] == {
        "stored": COUNT,
        "duplicates": 0,
        "dead_letters": 1,
        "since": {"duplicates": None, "dead_letters": None},  # Redis lost nothing
        "rebuilding": False,
    }
    assert sum(point["stored"] for point in dashboard.json["rate"]["series"]) == COUNT
    assert letter["raw"] == "not a transaction"
    revoked = web.test_cli_runner().invoke(args=["revoke-token", "acl"])
    assert revoked.exit_code == 0, revoked.output
    assert api.get("/api/users/1/recent").status_code == 401
    assert refusals(acl_redis) == []


def test_the_subscriber_user_moves_the_old_layout(acl_redis):
    """The one-time migration of the sorted sets `latest:*` (SCAN, ZRANGE, DEL, GET/SET)."""
    from datetime import datetime
    from decimal import Decimal

    keys = Keys(PREFIX)
    tx = Transaction("t1", 7, Decimal("12.50"), datetime(2026, 11, 28, 12, 0, 0))
    acl_redis.client().zadd(keys.old_recent(7), {to_json_text(tx): tx.ts.timestamp()})
    lists = RecentLists(client_of(acl_redis, SUBSCRIBER_USER), keys)
    lists.migrate()
    assert lists.read(7) == [tx]
    assert not acl_redis.client().exists(keys.old_recent(7))
    assert refusals(acl_redis) == []


def test_the_subscriber_user_rebuilds_what_redis_lost(acl_redis, mysql_engine):
    """The rebuild's scripts (GET, SET, DEL, EXISTS, TYPE, PEXPIRE, HSET, HINCRBY and the
    merge) and the web app's read of a marker and a list, each with its own user."""
    from datetime import datetime
    from decimal import Decimal

    from app import create_app  # here, not at the top: importing `app` builds an app

    keys = Keys(PREFIX)
    subscriber = client_of(acl_redis, SUBSCRIBER_USER)
    rebuild = RedisRebuild(mysql_engine, subscriber, keys, "subscriber-a")
    rebuild.check()
    at = datetime(2026, 1, 1)
    txns = [Transaction(f"t{i}", i % 3 + 1, Decimal(1), at.replace(minute=i)) for i in range(9)]
    Store(mysql_engine, subscriber, keys, 6 * 3600).store(txns)
    acl_redis.client().flushall()
    web = create_app(
        {
            "TESTING": True,
            "ENGINE": mysql_engine,
            "REDIS_URL": acl_redis.url_for(WEB_USER),
            "KEY_PREFIX": PREFIX,
            "AUTH": False,
        }
    )
    api = web.test_client()
    from_database = api.get("/api/users/1/recent").json

    assert rebuild.check().users == 3
    assert_recent_lists_match_db(mysql_engine, subscriber, keys)
    assert api.get("/api/users/1/recent").json == from_database
    assert api.get("/api/live").json["counts"]["stored"] == 9
    assert refusals(acl_redis) == []


@pytest.mark.parametrize(
    ("user", "command"),
    [
        # The emitter publishes: it reads nothing and deletes nothing, not even by a script.
        (EMITTER_USER, ("LRANGE", "txstream:recent:1", 0, -1)),
        (EMITTER_USER, ("XREAD", "STREAMS", "transactions", "0")),
        (EMITTER_USER, ("XRANGE", "transactions", "-", "+")),
        (EMITTER_USER, ("XREADGROUP", "GROUP", "store", "me", "STREAMS", "transactions", ">")),
        (EMITTER_USER, ("DEL", "transactions")),
        (EMITTER_USER, ("DEL", "txstream:recent:1")),
        (EMITTER_USER, ("XTRIM", "transactions", "MAXLEN", 0)),
        (EMITTER_USER, ("XDEL", "transactions", "1-1")),
        (EMITTER_USER, ("EVAL", "return redis.call('XRANGE', KEYS[1], '-', '+')", 1, STREAM)),
        (EMITTER_USER, ("EVAL", "return redis.call('DEL', KEYS[1])", 1, "transactions")),
        (EMITTER_USER, ("EVAL", "return redis.call('LRANGE', 'txstream:recent:1', 0, -1)", 0)),
        (EMITTER_USER, ("SUBSCRIBE", "transactions")),
        # The web app reads: it writes nothing but its own rate-limit counters.
        (WEB_USER, ("SET", "txstream:recent:1", "forged")),
        (WEB_USER, ("LPUSH", "txstream:recent:1", "forged")),
        (WEB_USER, ("DEL", "txstream:recent:1")),
        (WEB_USER, ("DEL", "txstream:dead")),
        (WEB_USER, ("RENAME", "txstream:ratelimit:x", "txstream:recent:1")),
        (WEB_USER, ("PUBLISH", "transactions", FORGED)),
        (WEB_USER, ("XADD", "transactions", "*", "line", FORGED)),
        (WEB_USER, ("EVAL", "return redis.call('LPUSH', KEYS[1], 'x')", 1, "txstream:recent:1")),
        (WEB_USER, ("RPUSH", "txstream:dead", FORGED)),
        (WEB_USER, ("SET", "txstream:dead:count", "0")),
        (WEB_USER, ("SET", "txstream:derived", "all")),  # a rebuild's marker
        (WEB_USER, ("DEL", "txstream:derived")),
        (WEB_USER, ("SET", "txstream:dead:since", "all")),
        (WEB_USER, ("KEYS", "*")),
        (WEB_USER, ("INCRBY", "txstream:rate:1700000000", 5)),
        (WEB_USER, ("HINCRBY", "txstream:counts", "stored", 5)),
        (WEB_USER, ("ZINCRBY", "txstream:top:sum:1699999200", 5, "1")),
        (WEB_USER, ("SET", "txstream:top:count:1699999200", "x")),
        # The subscriber stores what it reads: it cannot make transactions up.
        (SUBSCRIBER_USER, ("PUBLISH", "transactions", FORGED)),
        (SUBSCRIBER_USER, ("XADD", "transactions", "*", "line", FORGED)),
        (SUBSCRIBER_USER, ("EVAL", "return redis.call('PUBLISH', 'transactions', 'x')", 0)),
        # Nobody touches another application's keys, nor the server.
        (SUBSCRIBER_USER, ("GET", "another-app:key")),
        (WEB_USER, ("GET", "another-app:key")),
        (EMITTER_USER, ("FLUSHALL",)),
        (SUBSCRIBER_USER, ("CONFIG", "SET", "appendonly", "no")),
        (WEB_USER, ("ACL", "SETUSER", "txstream-web", "+@all")),
    ],
)  # fmt: skip
def test_each_user_is_refused_what_its_process_does_not_do(acl_redis, user, command):
    with client_of(acl_redis, user) as client:
        with pytest.raises(redis.ResponseError, match=REFUSED):
            client.execute_command(*command)
    assert acl_redis.client().dbsize() == 0  # and nothing was written


@pytest.mark.parametrize("declared", ["txstream:recent:1", "txstream:ratelimit:x"])
def test_the_web_user_cannot_write_with_a_script_of_its_own(acl_redis, declared):
    """It may load scripts (the rate limiter's), but they run with its own rights."""
    with client_of(acl_redis, WEB_USER) as web:
        sha = web.script_load("return redis.call('LPUSH', 'txstream:recent:1', 'forged')")
        with pytest.raises(redis.ResponseError, match=REFUSED):
            web.evalsha(sha, 1, declared)
    assert not acl_redis.client().exists("txstream:recent:1")


@pytest.mark.parametrize(
    "write",
    [
        "redis.call('RPUSH', KEYS[1], 'forged')",
        "redis.call('DEL', KEYS[1])",
        "redis.call('EXPIRE', KEYS[1], 1)",
        "redis.call('SET', KEYS[2], '0')",
        "redis.call('INCR', KEYS[2])",
    ],
)
def test_the_web_user_declares_the_dead_letters_to_its_script_and_only_reads_them(acl_redis, write):
    """The dead-letter script declares its keys (a Redis Cluster needs it), which the ACL
    allows as writes: what the script does with them is still read only."""
    keys = Keys(PREFIX)
    dead = [keys.dead, keys.dead_count]
    acl_redis.client().rpush(keys.dead, "a letter")
    with client_of(acl_redis, WEB_USER) as web:
        sha = web.script_load(f"{write} return 1")
        with pytest.raises(redis.ResponseError, match=REFUSED):
            web.evalsha(sha, 2, *dead)
        assert DeadLetters(web, keys).page(10)[0][0].raw == "a letter"
    assert acl_redis.client().lrange(keys.dead, 0, -1) == [b"a letter"]
    assert acl_redis.client().ttl(keys.dead) == -1 and not acl_redis.client().exists(dead[1])


def test_the_default_user_is_off(acl_redis):
    with redis.Redis.from_url(acl_redis.url_for()) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()


def test_the_web_user_counts_requests_and_announces_revocations(acl_redis):
    """The rate limiter's script and revoke-token's new epoch, with the web user's rights."""
    keys = Keys(PREFIX)
    with client_of(acl_redis, WEB_USER) as web:
        limits = FixedWindows(keys, "2/second;2/minute")
        hits = [limits.hit(web, "token:1") for _ in range(3)]
        assert [hit.exceeded is None for hit in hits] == [True, True, False]
        tokens.announce_revocation(web, keys)
        assert limits.hit(web, "token:2").epoch != hits[0].epoch
    names = acl_redis.client().keys("*")
    assert names and all(
        name.startswith(b"txstream:ratelimit:") or name == keys.token_epoch.encode()
        for name in names
    )
    assert refusals(acl_redis) == []


def test_rate_limits_outside_the_prefix_are_refused(acl_redis):
    """Another KEY_PREFIX than the file's: configure both the same."""
    with client_of(acl_redis, WEB_USER) as web:
        with pytest.raises(redis.ResponseError, match=REFUSED):
            FixedWindows(Keys("other:"), "2/minute").hit(web, "token:1")


def test_the_subscriber_user_deletes_stale_consumers_and_beats(acl_redis):
    """Heartbeats (HSET, EXPIRE, ZADD...) and the stale-consumer script (XINFO, DELCONSUMER)."""
    from txstream.heartbeats import Heartbeat, read_subscribers
    from txstream.times import utcnow
    from txstream.transport import StreamSource

    admin = acl_redis.client()
    admin.xgroup_create(STREAM, "store", id="0", mkstream=True)
    admin.xgroup_createconsumer(STREAM, "store", "gone")
    subscriber = client_of(acl_redis, SUBSCRIBER_USER)
    source = StreamSource(subscriber, STREAM, "store", 1000, 5)
    source.stale_consumer_ms = 0
    wait_until(lambda: admin.xinfo_consumers(STREAM, "store")[0]["idle"] > 0, 5, "idle")
    source.tidy(set())
    assert admin.xinfo_consumers(STREAM, "store") == []
    beat = Heartbeat(subscriber, Keys(PREFIX), source.name, "stream", lambda: (1, None))
    beat.beat()
    assert [s.name for s in read_subscribers(subscriber, Keys(PREFIX), utcnow())] == [source.name]
    beat.stop()
    assert admin.keys("txstream:subscriber*") == []
    assert refusals(acl_redis) == []
