"""Redis keys of another type than txstream writes there, as anyone who may write to Redis
can set them (txstream.wrongtype): no answer is a 500, transactions are still stored and
acknowledged, none is called a dead letter, and the writer that owns a key replaces it,
logged once as an ERROR naming the key and what it held.

Every key but the stream and the partitions record (configuration: refused at start,
tests/test_partitions.py), each set to every other type: first with the web app and the
batch store in this process (each (key, type) on its own), then with the real subscriber
(every key at once, for each type).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.helpers import (
    KINDS,
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    TEST_SECRET_KEY,
    line,
    retype,
    sign_in,
)
from tests.test_cluster_web import documented_routes
from txstream import queries, tokens
from txstream.heartbeats import Heartbeat
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.rebuild_redis import RedisRebuild
from txstream.recent import RECENT_SIZE, RecentLists
from txstream.store import RATE_BUCKET, Store, dead_letter, rate_bucket
from txstream.testing import (
    GROUP,
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    pending,
    stored_transactions,
    stream_env,
    wait_for_log,
    wait_until_stored,
)
from txstream.times import to_micros, utcnow
from txstream.transaction import to_json
from txstream.windows import window_start
from txstream.wire import format_line, parse

pytestmark = pytest.mark.services

WINDOW_HOURS = 6
RATE_LIMIT = (600, 60)  # the app's RATE_LIMIT here, 600/minute: its counter's name
BUCKET = 1_700_000_000  # the ingest-rate bucket of the in-process batches (fixed)
PAGES = ["/", "/users/1", "/dead-letters", "/system", "/metrics", "/healthz", "/login"]


class World:
    """The names the keys depend on: the web app's token and the current window."""

    def __init__(self, keys: Keys, token_id: int) -> None:
        self.keys = keys
        self.token_id = token_id
        start = window_start(utcnow(), WINDOW_HOURS * 3600)
        self.window = to_micros(start) // 10**6


# Each key of txstream's but the stream and the partitions record: its name, and its type.
KEYS: dict[str, tuple[Callable[[World], str], str]] = {
    "recent": (lambda w: w.keys.recent(1), "list"),
    "counts": (lambda w: w.keys.counts(), "hash"),
    "rate": (lambda w: w.keys.rate(BUCKET), "string"),
    "dead": (lambda w: w.keys.dead, "list"),
    "dead-count": (lambda w: w.keys.dead_count, "string"),
    "layout": (lambda w: w.keys.layout, "string"),
    "heartbeat": (lambda w: w.keys.subscriber("sub-1"), "hash"),
    "subscribers": (lambda w: w.keys.subscribers, "zset"),
    "ratelimit": (lambda w: w.keys.rate_count(f"token:{w.token_id}", *RATE_LIMIT), "string"),
    "token-epoch": (lambda w: w.keys.token_epoch, "string"),
    "live-top": (lambda w: w.keys.live_top(w.window), "string"),
    "derived": (lambda w: w.keys.derived(0), "string"),
    "derived-lock": (lambda w: w.keys.derived_lock(0), "string"),
    "dead-since": (lambda w: w.keys.dead_since, "string"),
}
# What may answer 503 (naming the key) while a key is of another type: nothing else may.
MAY_BE_503 = {"counts": {"/api/live"}, "dead": {"/api/dead-letters", "/dead-letters"}}


def answers(app, token: str) -> dict:
    """Every API route (the OpenAPI document's, user 1) and every page, signed in."""
    client = sign_in(app.test_client(), token)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    paths = [*documented_routes(app, user_id=1), *PAGES]
    return {path: client.get(path) for path in paths}


@pytest.mark.parametrize(
    ("name", "kind"),
    [(name, kind) for name, (_, own) in KEYS.items() for kind in KINDS if kind != own],
)
def test_a_key_of_another_type_breaks_nothing_and_its_writer_replaces_it(
    name, kind, mysql_engine, redis_client, key_prefix, monkeypatch, caplog
):
    from app import create_app  # here, not at the top: importing `app` builds an app

    monkeypatch.setattr("txstream.store.rate_bucket", lambda epoch: BUCKET)
    keys = Keys(key_prefix, stream=key_prefix + "stream")
    app = create_app(
        {
            "TESTING": True,
            "ENGINE": mysql_engine,
            "REDIS": redis_client,
            "KEY_PREFIX": key_prefix,
            "STREAM": keys.stream,
            "TRANSPORT": "stream",
            "GROUP": GROUP,
            "WINDOW_HOURS": Decimal(WINDOW_HOURS),
            "SECRET_KEY": TEST_SECRET_KEY,
            "RATE_LIMIT": "600/minute",
        }
    )
    token = tokens.create(mysql_engine, f"test-{secrets.token_hex(6)}")
    found = queries.read(mysql_engine, lambda conn: tokens.find(conn, tokens.hash_of(token)))
    key = KEYS[name][0](World(keys, found.id))
    store = Store(mysql_engine, redis_client, keys, WINDOW_HOURS * 3600, group=GROUP)
    heartbeat = Heartbeat(redis_client, keys, "sub-1", "stream", lambda: (0, None))
    now = utcnow()
    seeded = [
        parse(line(1 + i % 2, f"{i}.25", now - timedelta(minutes=i), f"s{i}")) for i in range(8)
    ]
    store.store(seeded)
    heartbeat.beat()
    redis_client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)

    retype(redis_client, key, kind)
    before = answers(app, token)

    statuses = {path: r.status_code for path, r in before.items()}
    assert {p for p, s in statuses.items() if s != 200} <= MAY_BE_503.get(name, set()), statuses
    for response in (r for r in before.values() if r.status_code == 503):
        assert key in response.get_data(as_text=True)
    newest_of_1 = sorted((tx for tx in seeded if tx.user_id == 1), key=lambda tx: tx.ts)[::-1]
    assert before["/api/users/1/recent"].json["items"] == [
        to_json(tx) for tx in newest_of_1[:RECENT_SIZE]
    ]  # from the list, or from the database while the list is of another type

    # The writers, each as its process does: a batch with a dead letter from the stream,
    # the subscriber's start (the layout), a heartbeat; the requests above were the web's.
    lines = [line(1, "5.00", now, "new-1"), line(2, "6.00", now, "new-2"), "not a line"]
    ids = [redis_client.xadd(keys.stream, {"line": text}) for text in lines]
    redis_client.xreadgroup(GROUP, "sub-1", {keys.stream: ">"})
    new = [parse(text) for text in lines[:2]]
    store.store(new, [dead_letter(lines[2], "not a transaction")], {0: ids})
    RecentLists(redis_client, keys).migrate()
    heartbeat.beat()
    RedisRebuild(mysql_engine, redis_client, keys, "sub-1").check()

    assert {tx.txn_id for tx in stored_transactions(mysql_engine)} == {
        tx.txn_id for tx in seeded + new
    }
    assert pending(redis_client, keys.stream) == 0
    letters = [json.loads(item) for item in redis_client.lrange(keys.dead, 0, -1)]
    assert [letter["raw"] for letter in letters] == ["not a line"]
    replaced = [
        r for r in caplog.records if r.getMessage().startswith(f"replaced Redis key {key}:")
    ]
    assert [(r.levelname, r.getMessage()) for r in replaced] == [
        ("ERROR", f"replaced Redis key {key}: it held a {kind} that txstream cannot use")
    ]
    after = answers(app, token)
    assert {path: r.status_code for path, r in after.items()} == dict.fromkeys(after, 200)


@pytest.mark.parametrize("kind", KINDS)
def test_the_subscriber_stores_and_acknowledges_everything_and_replaces_every_key(
    kind, run, redis_client, mysql_engine, key_prefix
):
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix)
    keys = Keys(key_prefix, stream=env["STREAM"])
    good = list(emitted(200, 20, 7))
    derived = {
        **{keys.recent(user): "list" for user in {tx.user_id for tx in good}},
        keys.counts(): "hash",
        keys.dead: "list",
        keys.dead_count: "string",
        keys.layout: "string",
        keys.subscribers: "zset",
        keys.derived(0): "string",
        keys.derived_lock(0): "string",
        keys.dead_since: "string",
    }
    retyped = [key for key, own in derived.items() if own != kind]
    # The ingest-rate counters of the next two minutes: each one used is replaced.
    first = rate_bucket(utcnow().timestamp())
    rates = [keys.rate(first + RATE_BUCKET * i) for i in range(12) if kind != "string"]
    for key in retyped + rates:
        retype(redis_client, key, kind)
    with redis_client.pipeline(transaction=False) as pipe:
        for tx in good:
            pipe.xadd(keys.stream, {"line": format_line(tx)})
        pipe.xadd(keys.stream, {"line": "not a line"})
        pipe.execute()

    subscriber = run("sub_and_store.py", "--stats-interval", "0.5", env=env)
    name = wait_for_log(subscriber, r"reading stream .* as '([^']+)' in group").group(1)
    heartbeat = keys.subscriber(name)
    wait_until(lambda: redis_client.exists(heartbeat), 20, "the first heartbeat")
    if kind != "hash":
        retype(redis_client, heartbeat, kind)
        retyped.append(heartbeat)
        wait_for_log(subscriber, rf"replaced Redis key {re.escape(heartbeat)}:")
    wait_until_stored(mysql_engine, len(good), [subscriber])
    wait_until(
        lambda: redis_client.type(keys.dead) == b"list" and redis_client.llen(keys.dead),
        20,
        "the dead letter",
    )
    wait_until(lambda: pending(redis_client, keys.stream) == 0, 20, "no pending entries")
    assert subscriber.stop() == 0, subscriber.output

    assert_stored_exactly(mysql_engine, good)
    assert_recent_lists_match_db(mysql_engine, redis_client, keys)
    letters = [json.loads(item) for item in redis_client.lrange(keys.dead, 0, -1)]
    assert [letter["raw"] for letter in letters] == ["not a line"]
    for key in retyped:
        logged = re.findall(
            rf" ERROR .*replaced Redis key {re.escape(key)}: it held a (\w+)", subscriber.output
        )
        assert logged == [kind], (key, subscriber.output)
    replaced_rates = [subscriber.output.count(f"replaced Redis key {k}:") for k in rates]
    assert set(replaced_rates) <= {0, 1} and (sum(replaced_rates) > 0 or kind == "string")
