"""Subscriber heartbeats, stale stream consumers, and the System page (/system, /api/system)."""

from __future__ import annotations

import html
import logging
import time

import pytest
import redis

from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL, make_app, signed_in_client
from txstream.heartbeats import (
    SHOWN_SUBSCRIBERS,
    Heartbeat,
    live_subscribers,
    read_subscribers,
)
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.testing import emitter_args, wait_for_log, wait_until_stored
from txstream.times import format_time, utcnow
from txstream.transport import StreamSource

COUNT, USERS, SEED = 200, 10, 5


def forge(client: redis.Redis, keys: Keys, name: str, **fields: str) -> None:
    """A heartbeat written by someone else than a subscriber."""
    client.hset(keys.subscriber(name), mapping={"name": name, **fields})
    client.zadd(keys.subscribers, {name: 1})


@pytest.mark.services
@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_a_subscriber_beats_while_it_runs_and_is_gone_after_a_clean_stop(
    run, redis_client, mysql_engine, key_prefix, channel, transport
):
    stream = key_prefix + "stream"
    env = {
        "REDIS_URL": TEST_REDIS_URL,
        "DATABASE_URL": TEST_DATABASE_URL,
        "TRANSPORT": transport,
        "CHANNEL": channel,
        "STREAM": stream,
        "KEY_PREFIX": key_prefix,
        "WINDOW_HOURS": "6",
        "BATCH_INTERVAL_MS": "50",
    }
    keys = Keys(key_prefix, stream)
    subscriber = run("sub_and_store.py", env=env)
    wait_for_log(subscriber, r"reading .*; waiting for transactions")

    def beat() -> dict | None:
        found = [s for s in live_subscribers(redis_client, keys, utcnow())]
        return found[0] if len(found) == 1 else None

    first = wait_until(beat, 20, "the subscriber's heartbeat")
    assert first.pid == subscriber.proc.pid and first.transport == transport
    assert first.name.startswith(f"{first.host}-{first.pid}-")
    assert first.stored == 0 and first.last_commit_at == ""

    assert run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env).wait() == 0
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    later = wait_until(lambda: (b := beat()) and b.stored == COUNT and b, 20, "stored counted")
    assert later.heartbeat_at > first.heartbeat_at and later.last_commit_at

    web = make_app(mysql_engine, redis_client, key_prefix, TRANSPORT=transport, STREAM=stream)
    client = signed_in_client(web)
    body = client.get("/api/system").json
    (shown,) = body["subscribers"]
    assert shown["name"] == first.name and shown["pid"] == first.pid
    assert shown["live"] is True and shown["stored"] == COUNT
    assert body["redis"] == body["database"] == "ok"
    assert body["dead_letters"] == 0 and body["window"]["window_seconds"] == 6 * 3600
    page = client.get("/system").get_data(as_text=True)
    assert first.name in page and ">live<" in page and f">{COUNT}<" in page
    if transport == "stream":
        # every entry stored and acknowledged, and so trimmed
        assert body["stream"]["length"] == 0 and body["stream"]["pending"] == 0
        assert [c["name"] for c in body["stream"]["consumers"]] == [first.name]
    else:
        assert body["stream"] is None and "pub/sub: no stream" in page

    assert subscriber.stop() == 0, subscriber.output
    assert not redis_client.exists(keys.subscriber(first.name))
    assert redis_client.zscore(keys.subscribers, first.name) is None
    assert client.get("/api/system").json["subscribers"] == []


@pytest.mark.services
def test_idle_consumers_with_nothing_pending_are_deleted(redis_client, key_prefix, caplog):
    stream = key_prefix + "stream"
    redis_client.xgroup_create(stream, "store", id="0", mkstream=True)
    redis_client.xadd(stream, {"line": "x"})
    redis_client.xgroup_createconsumer(stream, "store", "gone")  # never read
    redis_client.xreadgroup("store", "holds-one", {stream: ">"})  # one entry pending
    redis_client.xgroup_createconsumer(stream, "store", "live-one")
    source = StreamSource(redis_client, stream, "store", 1000, 5)
    redis_client.xgroup_createconsumer(stream, "store", source.name)

    def consumers() -> set[str]:
        return {c["name"].decode() for c in redis_client.xinfo_consumers(stream, "store")}

    source.tidy(set())  # idle for less than a day: all kept
    assert consumers() == {"gone", "holds-one", "live-one", source.name}

    source.stale_consumer_ms = 50
    wait_until(
        lambda: all(c["idle"] > 50 for c in redis_client.xinfo_consumers(stream, "store")),
        5,
        "idle consumers",
    )
    with caplog.at_level(logging.INFO, "txstream.transport"):
        source.tidy({"live-one"})
    assert consumers() == {"holds-one", "live-one", source.name}
    assert "deleted consumer 'gone' of group 'store'" in caplog.text


def test_heartbeats_index_expire_and_live_by_their_age(fake_redis):
    keys = Keys("t:")
    beat = Heartbeat(fake_redis, keys, "sub-1", "stream", lambda: (7, None))
    beat.beat()
    assert 0 < fake_redis.ttl(keys.subscriber("sub-1")) <= 24 * 3600
    now = utcnow()
    (s,), more = read_subscribers(fake_redis, keys, now)
    assert more == 0
    assert (s.name, s.stored, s.transport, s.live) == ("sub-1", 7, "stream", True)
    assert [x.name for x in live_subscribers(fake_redis, keys, now)] == ["sub-1"]
    fake_redis.hset(keys.subscriber("sub-1"), "heartbeat_at", format_time(now.replace(year=2020)))
    assert live_subscribers(fake_redis, keys, now) == []
    beat.stop()  # never started: stopping only deletes the heartbeat
    assert read_subscribers(fake_redis, keys, now) == ([], 0)


HOSTILE = "<script>alert(1)</script>"


@pytest.mark.parametrize(
    "fields",
    [
        {"host": HOSTILE, "pid": HOSTILE, "stored": "-1", "rate": "nan", "heartbeat_at": "x"},
        {"transport": "A" * 100_000, "pid": "9" * 5000, "rate": "1e999", "started_at": HOSTILE},
        {"last_commit_at": "\xff", "stored": "12.5", "rate": "1.2.3", "heartbeat_at": HOSTILE},
    ],
)
def test_forged_heartbeats_are_shown_as_text(app, client, fields):
    keys = Keys(app.config["KEY_PREFIX"])
    forge(app.config["REDIS"], keys, HOSTILE, **fields)

    page = client.get("/system")
    body = client.get("/api/system")

    assert page.status_code == body.status_code == 200
    text = page.get_data(as_text=True)
    assert HOSTILE not in text and html.escape(HOSTILE) in text
    assert len(text) < 20_000  # huge values are cut short
    (shown,) = body.json["subscribers"]
    assert shown["name"] == HOSTILE and shown["live"] is False
    assert shown["pid"] is None and shown["stored"] is None and shown["rate"] is None


def test_the_system_page_says_redis_is_down_and_shows_the_rest(app, client, closed_port):
    app.config["WINDOW_HOURS"] = 6
    app.config["REDIS"] = redis.Redis.from_url(f"redis://127.0.0.1:{closed_port}/0")

    page = client.get("/system")

    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert '<th>Redis</th><td class="down">down</td>' in text
    assert '<th>Database</th><td class="ok">ok</td>' in text
    assert "Unknown: Redis is down." in text and "unknown: Redis is down" in text


def test_the_system_page_says_the_database_is_down_and_shows_the_rest(
    sqlite_engine, fake_redis, closed_port
):
    """Pages check their session's token in the database, so the page is seen without
    tokens here (AUTH=off); the API answers from a token it has cached (below)."""
    import models

    app = make_app(sqlite_engine, fake_redis, "t:", AUTH=False)
    forge(fake_redis, Keys("t:"), "sub-9", host="h")
    app.config["ENGINE"] = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/x")

    page = app.test_client().get("/system")

    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert '<th>Database</th><td class="down">down</td>' in text
    assert "unknown: the database is down" in text and "sub-9" in text


def test_the_api_says_the_database_is_down(app, client, closed_port):
    import models

    forge(app.config["REDIS"], Keys(app.config["KEY_PREFIX"]), "sub-9", host="h")
    for _ in range(2):  # the second request caches the token (the first learns the epoch)
        assert client.get("/api/system").json["database"] == "ok"
    app.config["ENGINE"] = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/x")

    body = client.get("/api/system").json

    assert (body["redis"], body["database"], body["window"]) == ("ok", "down", None)
    assert [s["name"] for s in body["subscribers"]] == ["sub-9"]


@pytest.mark.services
def test_the_lost_entries_of_every_partition_are_added_up_and_shown(
    redis_client, sqlite_engine, key_prefix, monkeypatch
):
    monkeypatch.setenv("STREAM_PARTITIONS", "3")
    keys = Keys(key_prefix, stream=key_prefix + "stream", partitions=3)
    for p, stream in enumerate(keys.streams):
        redis_client.xgroup_create(stream, "store", id="0", mkstream=True)
        redis_client.hset(keys.counts(p), "lost", p * 2)  # what the subscribers counted
    web = make_app(
        sqlite_engine, redis_client, key_prefix, TRANSPORT="stream", STREAM=key_prefix + "stream"
    )
    client = signed_in_client(web)

    stream = client.get("/api/system").json["stream"]
    assert stream["lost"] == 0 + 2 + 4
    assert [p["lost"] for p in stream["partitions"]] == [0, 2, 4]
    page = client.get("/system").get_data(as_text=True)
    assert '<td class="num down">6 (deleted before they were stored' in page

    redis_client.delete(keys.counts(1))
    redis_client.rpush(keys.counts(1), "not a hash")  # someone's: the total is unknown
    stream = client.get("/api/system").json["stream"]
    assert stream["lost"] is None and [p["lost"] for p in stream["partitions"]] == [0, None, 4]
    assert "<th>Lost</th><td>unknown</td>" in client.get("/system").get_data(as_text=True)


def test_the_nav_links_the_system_page(client):
    assert 'href="/system"' in client.get("/").get_data(as_text=True)


FLOOD = 200_000  # names forged into the subscribers' index


@pytest.mark.services
@pytest.mark.parametrize("ahead", [True, False], ids=["future-scores", "current-scores"])
def test_a_flooded_subscribers_index_is_read_in_bounded_steps(
    private_redis, mysql_engine, key_prefix, ahead
):
    """200,000 forged names (scored a year ahead, or now): each answer lists at most
    SHOWN_SUBSCRIBERS, says how many more there are, and reads as many hashes; scores
    ahead of the clock are no heartbeats, and the next beat removes them."""
    redis_client = private_redis.client()
    keys = Keys(key_prefix)
    beat = Heartbeat(redis_client, keys, "sub-1", "stream", lambda: (0, None))
    beat.beat()
    score = time.time() + (365 * 24 * 3600 if ahead else 0)
    for start in range(0, FLOOD, 10_000):
        names = {f"forged-{i}": score for i in range(start, start + 10_000)}
        redis_client.zadd(keys.subscribers, names)
    client = signed_in_client(make_app(mysql_engine, redis_client, key_prefix))
    client.get("/healthz")  # the token's first request: its look-up is done

    redis_client.config_resetstat()
    sent = redis_client.info("stats")["total_net_output_bytes"]
    system, live, page = (client.get(path) for path in ("/api/system", "/api/live", "/system"))
    sent = redis_client.info("stats")["total_net_output_bytes"] - sent
    calls = {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in redis_client.info("commandstats").items()
    }

    assert system.status_code == live.status_code == page.status_code == 200
    assert calls.get("hgetall", 0) <= 2 * SHOWN_SUBSCRIBERS  # the API and the page
    assert sent < 100_000  # bytes Redis sent for three answers (and INFO)
    assert len(system.data) < 50_000 and len(page.data) < 100_000
    body = system.json
    text = page.get_data(as_text=True)
    if ahead:
        assert [s["name"] for s in body["subscribers"]] == ["sub-1"]
        assert body["more_subscribers"] == 0 and "more listed in the" not in text
        assert live.json["subscribers"] == 1
        beat.beat()
        assert redis_client.zrange(keys.subscribers, 0, -1) == [b"sub-1"]
    else:
        assert len(body["subscribers"]) == 0  # the forged names have no heartbeat hash
        assert body["more_subscribers"] == FLOOD + 1 - SHOWN_SUBSCRIBERS
        assert f"And {FLOOD + 1 - SHOWN_SUBSCRIBERS} more listed in the" in text
        assert live.json["subscribers"] == FLOOD + 1
    redis_client.close()
