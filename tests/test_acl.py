"""Redis users (deploy/redis.acl): each process works with its own user, and can do no more.

README's table of what each user may and may not do is read here and tried, command by
command, as that user: so the table is what this file proves.

A private redis-server runs the shipped ACL file, each placeholder password replaced by a
new one. The processes use the names that the file grants: key prefix `txstream:`,
channel and stream `transactions`, group `store` (the defaults).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
import redis

from tests.helpers import TEST_DATABASE_URL
from txstream import tokens
from txstream.deadletters import DeadLetters
from txstream.keys import Keys
from txstream.processes import ROOT, wait_until
from txstream.ratelimit import FixedWindows
from txstream.rebuild_redis import RedisRebuild
from txstream.recent import RecentLists
from txstream.store import Store
from txstream.testing import (
    ADMIN_USER,
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
NOT_IN_SCRIPTS = "not allowed from script"  # a command no script may run, whoever calls it
RUN_ARGV = "return redis.call(unpack(ARGV))"  # a script that runs the command it is given
KEPT = "return 1"  # a script every user may run, once loaded

# The command line that tries a command of README's table on a key of it (None: keyless).
CALLS: dict[str, Callable[[str | None], tuple]] = {
    "ACL SETUSER": lambda _: ("ACL", "SETUSER", EMITTER_USER, "+@all"),
    "CONFIG SET": lambda _: ("CONFIG", "SET", "appendonly", "no"),
    "DEL": lambda k: ("DEL", k),
    "EVAL": lambda k: ("EVAL", KEPT, 0) if k is None else ("EVAL", KEPT, 1, k),
    "EVALSHA": lambda k: ("EVALSHA", sha1(KEPT), 1, k),
    "EXPIRE": lambda k: ("EXPIRE", k, 3600),
    "FLUSHALL": lambda _: ("FLUSHALL",),
    "FUNCTION LOAD": lambda _: (
        "FUNCTION",
        "LOAD",
        "#!lua name=x\nredis.register_function('x', tostring)",
    ),
    "GET": lambda k: ("GET", k),
    "EXISTS": lambda k: ("EXISTS", k),
    "PEXPIRE": lambda k: ("PEXPIRE", k, 60_000),
    "HGETALL": lambda k: ("HGETALL", k),
    "HINCRBY": lambda k: ("HINCRBY", k, "stored", 5),
    "HMGET": lambda k: ("HMGET", k, "stored"),
    "HSET": lambda k: ("HSET", k, "name", "x"),
    "INCR": lambda k: ("INCR", k),
    "INCRBY": lambda k: ("INCRBY", k, 5),
    "INFO": lambda _: ("INFO", "replication"),
    "KEYS": lambda _: ("KEYS", "*"),
    "LLEN": lambda k: ("LLEN", k),
    "LPUSH": lambda k: ("LPUSH", k, FORGED),
    "LRANGE": lambda k: ("LRANGE", k, 0, -1),
    "LTRIM": lambda k: ("LTRIM", k, 0, -1),
    "MGET": lambda k: ("MGET", k),
    "PING": lambda _: ("PING",),
    "PUBLISH": lambda k: ("PUBLISH", k, FORGED),
    "RENAME": lambda k: ("RENAME", k, f"{k}:renamed"),
    "RPUSH": lambda k: ("RPUSH", k, FORGED),
    "SCAN": lambda _: ("SCAN", 0),
    "SET": lambda k: ("SET", k, "forged"),
    "SUBSCRIBE": lambda k: ("SUBSCRIBE", k),
    "TTL": lambda k: ("TTL", k),
    "TYPE": lambda k: ("TYPE", k),
    "UNLINK": lambda k: ("UNLINK", k),
    "WAIT": lambda _: ("WAIT", 0, 0),
    "XACK": lambda k: ("XACK", k, "store", "1-1"),
    "XADD": lambda k: ("XADD", k, "*", "line", FORGED),
    "XAUTOCLAIM": lambda k: ("XAUTOCLAIM", k, "store", "me", 0, "0"),
    "XCLAIM": lambda k: ("XCLAIM", k, "store", "me", 0, "1-1"),
    "XDEL": lambda k: ("XDEL", k, "1-1"),
    "XGROUP CREATE": lambda k: ("XGROUP", "CREATE", k, "new", "0", "MKSTREAM"),
    "XGROUP DELCONSUMER": lambda k: ("XGROUP", "DELCONSUMER", k, "store", "me"),
    "XGROUP DESTROY": lambda k: ("XGROUP", "DESTROY", k, "store"),
    "XGROUP SETID": lambda k: ("XGROUP", "SETID", k, "store", "$"),
    "XINFO CONSUMERS": lambda k: ("XINFO", "CONSUMERS", k, "store"),
    "XINFO GROUPS": lambda k: ("XINFO", "GROUPS", k),
    "XINFO STREAM": lambda k: ("XINFO", "STREAM", k),
    "XLEN": lambda k: ("XLEN", k),
    "XPENDING": lambda k: ("XPENDING", k, "store"),
    "XRANGE": lambda k: ("XRANGE", k, "-", "+"),
    "XREAD": lambda k: ("XREAD", "STREAMS", k, "0"),
    "XREADGROUP": lambda k: ("XREADGROUP", "GROUP", "store", "me", "STREAMS", k, ">"),
    "XSETID": lambda k: ("XSETID", k, "9999999999999-0"),
    "XTRIM": lambda k: ("XTRIM", k, "MAXLEN", 0),
    "ZADD": lambda k: ("ZADD", k, 1, "x"),
    "ZRANGE": lambda k: ("ZRANGE", k, 0, -1),
    "ZREM": lambda k: ("ZREM", k, "x"),
    "ZCOUNT": lambda k: ("ZCOUNT", k, "-inf", "+inf"),
}


def sha1(script: str) -> str:
    """What SCRIPT LOAD answers for `script`."""
    return hashlib.sha1(script.encode()).hexdigest()


def readme_rights() -> dict[str, dict[str, list[tuple[str, str | None]]]]:
    """README's table of Redis users: {user: {"may": [(command, key)], "may not": [...]}}.

    In each cell, each `;`-separated clause names commands (`XADD`, `XGROUP CREATE`) and
    keys or channels (`transactions`, `txstream:recent:*`, a `*` standing for `1`): each
    command goes with each key of its clause, or with none when it names none."""
    section = (ROOT / "README.md").read_text().split("## Redis users and TLS", 1)[1]
    rights = {}
    for row in section.split("\n## ", 1)[0].splitlines():
        cells = row.split("|")[1:-1]
        if len(cells) != 3 or not cells[0].strip().startswith("`txstream-"):
            continue
        user, may, may_not = (cell.strip() for cell in cells)
        rights[user.strip("`")] = {"may": _pairs(may), "may not": _pairs(may_not)}
    return rights


def _pairs(cell: str) -> list[tuple[str, str | None]]:
    pairs = []
    for clause in cell.split(";"):
        names = re.findall(r"`([^`]+)`", clause)
        commands = [n for n in names if re.fullmatch(r"[A-Z]+( [A-Z]+)?", n)]
        keys = [n.replace("*", "1") for n in names if re.fullmatch(r"[a-z][a-z0-9:*._-]*", n)]
        pairs += [(command, key) for command in commands for key in keys or [None]]
    return pairs


def attempt(client: redis.Redis, line: tuple) -> None:
    """Run a command line as `client`'s user (SUBSCRIBE on a pub/sub connection)."""
    if line[0] != "SUBSCRIBE":
        client.execute_command(*line)
        return
    with client.pubsub() as pubsub:
        pubsub.subscribe(*line[1:])
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"


RIGHTS = readme_rights()
PROCESS_USERS = [EMITTER_USER, SUBSCRIBER_USER, WEB_USER]


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
        "STREAM_MAXLEN": "100",  # the emitter waits for room, the subscriber trims
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
    assert ("WAITING for the subscribers" in emitter.output) == (transport == "stream")
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
        # every entry acknowledged, and so trimmed
        assert system["stream"]["length"] == 0 and system["stream"]["pending"] == 0
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
    assert [s.name for s in read_subscribers(subscriber, Keys(PREFIX), utcnow())[0]] == [
        source.name
    ]
    beat.stop()
    assert admin.keys("txstream:subscriber*") == []
    assert refusals(acl_redis) == []


def test_the_readme_table_names_every_user_and_only_commands_tried_here():
    assert set(RIGHTS) == {EMITTER_USER, SUBSCRIBER_USER, WEB_USER, ADMIN_USER}
    for user in PROCESS_USERS:
        assert RIGHTS[user]["may"] and RIGHTS[user]["may not"], user
        named = {command for pairs in RIGHTS[user].values() for command, _ in pairs}
        assert named <= set(CALLS), f"{user}: no command line to try {named - set(CALLS)}"


@pytest.mark.parametrize("user", PROCESS_USERS)
def test_each_user_may_what_the_readme_says(acl_redis, user):
    """Each command README's table allows is let through (it may still fail for another
    reason, a missing group say: not a refusal)."""
    acl_redis.client().script_load(KEPT)
    for command, key in RIGHTS[user]["may"]:
        with client_of(acl_redis, user) as client:
            try:
                attempt(client, CALLS[command](key))
            except redis.ResponseError as exc:
                assert not re.search(REFUSED, str(exc)), f"{user}: {command} {key}: {exc}"
    assert refusals(acl_redis) == []


def seed_every_kind_of_key(client: redis.Redis) -> None:
    """The keys of a running txstream (and another application's), to be left as they are."""
    keys = Keys(PREFIX)
    client.xgroup_create(STREAM, "store", id="0", mkstream=True)
    client.xadd(STREAM, {"line": "1,1.00,1700000000,t1"})
    client.lpush(keys.recent(1), "{}")
    client.rpush(keys.dead, "a letter")
    client.set(keys.dead_count, 1)
    client.set(keys.partitions_record, 1)
    client.hset(keys.counts(), "stored", 1)
    client.set("txstream:rate:1", 1)
    client.set("another-app:key", "theirs")


def snapshot(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key and its serialized value."""
    return {key: client.dump(key) for key in client.keys("*")}


@pytest.mark.parametrize("user", PROCESS_USERS)
def test_each_user_is_refused_what_the_readme_says_it_may_not(acl_redis, user):
    """Each command README's table forbids is refused: directly, and in a script of the
    user's (EVAL for the emitter, the others' SCRIPT LOAD and EVALSHA), which runs with
    the user's rights, the key declared or not. Nothing changes."""
    admin = acl_redis.client()
    seed_every_kind_of_key(admin)
    before, wrong = snapshot(admin), []
    with client_of(acl_redis, user) as client:
        if user == EMITTER_USER:
            run = ("EVAL", RUN_ARGV)
        else:
            run = ("EVALSHA", client.script_load(RUN_ARGV))
        for command, key in RIGHTS[user]["may not"]:
            line = CALLS[command](key)
            attempts = {"directly": line, "in a script": (*run, 0, *line)}
            if key is not None:
                attempts["in a script declaring the key"] = (*run, 1, key, *line)
            for how, tried in attempts.items():
                try:
                    attempt(client, tried)
                except redis.ResponseError as exc:
                    refused = re.search(REFUSED, str(exc)) or NOT_IN_SCRIPTS in str(exc)
                    if refused and not (how == "directly" and NOT_IN_SCRIPTS in str(exc)):
                        continue
                    wrong.append(f"{command} {key} {how}: {exc}")
                else:
                    wrong.append(f"{command} {key} {how}: allowed")
    assert wrong == []
    assert snapshot(admin) == before


def test_the_emitter_can_still_trim_while_it_appends(acl_redis):
    """What README says no ACL refuses: XADD's own MAXLEN option."""
    admin = acl_redis.client()
    seed_every_kind_of_key(admin)
    with client_of(acl_redis, EMITTER_USER) as emitter:
        emitter.execute_command("XADD", STREAM, "MAXLEN", 0, "*", "line", FORGED)
    assert admin.xlen(STREAM) == 0


def test_a_redis_function_runs_with_the_rights_of_its_caller(acl_redis):
    """Why the emitter appends with XADD of its own: a function that appends, loaded by an
    admin, runs its XADD with the caller's rights, so FCALL alone cannot give a user an
    append (and no trim) right, nor stop one with XADD from trimming."""
    admin = acl_redis.client()
    admin.function_load(
        "#!lua name=txstream_probe\n"
        "redis.register_function('append', function(keys, args)\n"
        "  return redis.call('XADD', keys[1], '*', 'line', args[1]) end)"
    )
    admin.acl_setuser(
        "probe", enabled=True, passwords=["+probe"], keys=[STREAM], commands=["+fcall"]
    )
    with redis.Redis(port=acl_redis.port, username="probe", password="probe") as probe:
        with pytest.raises(redis.ResponseError, match="can't run this command"):
            probe.fcall("append", 1, STREAM, FORGED)
    assert not admin.exists(STREAM)
