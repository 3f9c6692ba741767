"""The dashboard (/) and what it polls (GET /api/live): the transactions stored after a
position, in the order stored, whatever their event time; the ingest rate from the batch
script's counters, the top users, counts, health and outages."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import redis
from sqlalchemy import func, insert, select, text

import models
from tests.helpers import (
    BIGGEST,
    assert_no_inline_code,
    line,
    make_app,
    seed,
    signed_in_client,
)
from tests.test_api import get_json
from txstream import live
from txstream.keys import Keys
from txstream.rebuild_redis import ALL, RedisRebuild
from txstream.store import RATE_BUCKET, RATE_KEEP, Store, rate_bucket
from txstream.times import format_time, from_micros, to_micros, utcnow
from txstream.wire import parse

_MICRO = timedelta(microseconds=1)
WINDOW_SECONDS = 6 * 3600
NOW = datetime(2024, 5, 6, 12, 0, 0)  # the app fixture's CLOCK


def keys_of(app) -> Keys:
    return Keys(app.config["KEY_PREFIX"])


def test_live_gives_what_was_stored_after_the_position(app, client):
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now - 2 * _MICRO, "a"), line(2, "2.00", now - _MICRO, "b"))

    first = get_json(client, "/api/live")
    assert [item["txn_id"] for item in first["items"]] == ["b", "a"]  # newest stored first

    # stored later: shown, whatever their event time (the same as b, with a smaller txn_id)
    seed(app, line(3, "3.00", now - _MICRO, "c"), line(4, "4.00", now - _MICRO, "B"))
    seed(app, line(5, "5.00", now, "d"))
    second = get_json(client, "/api/live", after=first["position"])
    assert [item["txn_id"] for item in second["items"]] == ["d", "B", "c"]

    third = get_json(client, "/api/live", after=second["position"])
    assert third["items"] == [] and third["position"] == second["position"]


@pytest.mark.parametrize(
    "shift", [-timedelta(days=30), timedelta(hours=23)], ids=["late", "future-dated"]
)
def test_a_late_or_future_dated_transaction_is_on_the_next_poll_and_so_is_the_next_one(
    app, client, shift
):
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now, "before"))
    position = get_json(client, "/api/live")["position"]

    seed(app, line(2, "2.00", now + shift, "odd"))
    odd = get_json(client, "/api/live", after=position)
    assert [(item["txn_id"], item["time"]) for item in odd["items"]] == [
        ("odd", format_time(now + shift))  # shown with its own event time
    ]

    seed(app, line(3, "3.00", now, "next"))
    answer = get_json(client, "/api/live", after=odd["position"])
    assert [item["txn_id"] for item in answer["items"]] == ["next"]
    # a page loaded now polls from the same place
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'data-position="([^"]*)"', page)[1] == answer["position"]


def test_live_is_bounded_to_the_newest_stored(app, client):
    now = app.config["CLOCK"]()
    count = live.LIVE_LIMIT + 7
    seed(app, *(line(1, "1.00", now - k * _MICRO, f"t{k:03d}") for k in range(count)))

    items = get_json(client, "/api/live")["items"]

    assert len(items) == live.LIVE_LIMIT
    assert items[0]["txn_id"] == f"t{count - 1:03d}" and items[-1]["txn_id"] == "t007"


def test_stored_after_on_each_backend(backend, key_prefix):
    engine, client = backend
    rows = [parse(line(1, "1.00", NOW - k * _MICRO, f"n{k}")) for k in range(5)]
    Store(engine, client, Keys(key_prefix), WINDOW_SECONDS).store(rows)

    with engine.connect() as conn:
        ids = conn.scalars(select(models.transactions.c.id).order_by("id")).all()
        txns, position = live.stored_after(conn, ids[1], limit=2)
        assert [tx.txn_id for tx in txns] == ["n4", "n3"] and position == ids[4]
        assert live.stored_after(conn, ids[4]) == ([], ids[4])


@pytest.mark.services
@pytest.mark.parametrize("statement, kind", [("_STORED_AFTER", "range"), ("_STORED", "index")])
def test_the_live_query_reads_the_primary_key_in_order(mysql_engine, statement, kind):
    # On a table of 10,000,000 rows too: docs/BENCHMARKS.md, "The live feed's read".
    _stored(mysql_engine, *((i, NOW) for i in range(1, 201)))
    with mysql_engine.connect() as conn:
        query = getattr(live, statement).params(limit=live.LIVE_LIMIT, after=150)
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = conn.execute(text(f"EXPLAIN {compiled}")).mappings().one()
    assert (plan["key"], plan["type"]) == ("PRIMARY", kind), plan
    assert "filesort" not in (plan["Extra"] or ""), plan


def _stored(engine, *rows: tuple[int, datetime]) -> None:
    """Transactions with these ids, stored at these times: txn_id `t<id>`, user `<id>`."""
    one = {"amount": Decimal("1.00"), "ts": NOW}
    with engine.begin() as conn:
        conn.execute(
            insert(models.transactions),
            [
                {"id": i, "txn_id": f"t{i}", "user_id": i, "received_at": at, **one}
                for i, at in rows
            ],
        )


def _polled(engine, after: int | None, limit: int = live.LIVE_LIMIT) -> tuple[list[str], int]:
    """The txn_ids of `stored_after`'s answer, and its position."""
    with engine.connect() as conn:
        txns, position = live.stored_after(conn, after, limit)
    return [tx.txn_id for tx in txns], position


def test_the_position_waits_before_a_missing_id_until_it_commits(backend):
    engine, _client = backend
    _stored(engine, (1, NOW), (2, NOW), (4, NOW))  # 3: handed out, not committed yet

    assert _polled(engine, 0) == (["t4", "t2", "t1"], 2)
    assert _polled(engine, None) == (["t4", "t2", "t1"], 2)
    assert _polled(engine, 2) == (["t4"], 2)  # t4 again, until t3 is in: the page skips it

    _stored(engine, (3, NOW + timedelta(seconds=1)))
    assert _polled(engine, 2) == (["t4", "t3"], 4)
    assert _polled(engine, 4) == ([], 4)


def test_a_missing_id_is_passed_once_rows_stored_gap_wait_later_are_in(backend):
    engine, _client = backend
    _stored(engine, (1, NOW), (3, NOW), (4, NOW + live.GAP_WAIT - _MICRO))
    assert _polled(engine, 1)[1] == 1  # 2 may still come

    _stored(engine, (5, NOW + live.GAP_WAIT))  # 2 never came: rolled back, or that slow
    assert _polled(engine, 1) == (["t5", "t4", "t3"], 5)


def test_a_full_answer_skips_what_is_below_it(backend):
    engine, _client = backend
    _stored(engine, *((i, NOW) for i in (1, 2, 3, 10, 11, 12, 14)))

    assert _polled(engine, 0, limit=3) == (["t14", "t12", "t11"], 12)  # 13 may still come
    assert _polled(engine, None, limit=3) == (["t14", "t12", "t11"], 12)


@pytest.mark.services
def test_a_transaction_committed_after_a_newer_one_is_on_a_later_poll(
    mysql_engine, redis_client, key_prefix
):
    web = make_app(mysql_engine, redis_client, key_prefix, WINDOW_HOURS=Decimal(6))
    client = signed_in_client(web)
    store = Store(mysql_engine, redis_client, Keys(key_prefix), WINDOW_SECONDS)
    store.store([parse(line(1, "1.00", NOW, "first"))])
    position = get_json(client, "/api/live")["position"]

    with mysql_engine.connect() as slow:  # another subscriber's batch: its id is handed out
        slow.execute(
            insert(models.transactions).values(
                txn_id="slow", user_id=2, amount=Decimal("2.00"), ts=NOW, received_at=utcnow()
            )
        )
        store.store([parse(line(3, "3.00", NOW, "fast"))])  # a greater id, committed first
        early = get_json(client, "/api/live", after=position)
        assert [item["txn_id"] for item in early["items"]] == ["fast"]
        slow.commit()

    later = get_json(client, "/api/live", after=early["position"])
    assert [item["txn_id"] for item in later["items"]] == ["fast", "slow"]
    assert get_json(client, "/api/live", after=later["position"])["items"] == []


@pytest.mark.parametrize(
    "after",
    [
        "",
        "x",
        "bm90IGEgY3Vyc29y",
        "A" * 300,
        "MTo=",
        "c3RvcmVkOi0x",  # stored:-1
        "c3RvcmVkOjAx",  # stored:01
        "c3RvcmVkOjkyMjMzNzIwMzY4NTQ3NzU4MDg",  # stored:2^63
        "c3RvcmVkOjE=",  # stored:1, padded
        "c3RvcmVkOjF",  # stored:1 with stray bits
        "c3RvcmVkOjEg",  # "stored:1 "
        "MTcxNDk5NjgwMDAwMDAwMDphYmM",  # a page's cursor
        "c3RvcmVkOjE\u0131",  # not ASCII
    ],
)
def test_a_bad_after_is_a_400(client, after):
    assert (
        "after is not a valid position" in get_json(client, "/api/live", 400, after=after)["error"]
    )


def test_the_batch_script_counts_new_rows_only(backend, key_prefix):
    engine, client = backend
    keys = Keys(key_prefix)
    store = Store(engine, client, keys, WINDOW_SECONDS)
    RedisRebuild(engine, client, keys, "test").check()  # as a subscriber does at its start
    now = NOW
    batch = [parse(line(u, "1.25", now, f"r{u}")) for u in (1, 2, 3)]

    before = time.time()
    store.store(batch)
    store.store(batch[:2] + [parse(line(4, "-2.00", now, "r4"))])  # 2 duplicates, 1 new
    after = time.time()

    buckets = {rate_bucket(before), rate_bucket(after)}
    assert sum(int(client.get(keys.rate(b)) or 0) for b in buckets) == 4
    assert 0 < client.ttl(keys.rate(rate_bucket(after))) <= RATE_KEEP
    assert live.counts(client, keys) == {
        "stored": 4,
        "duplicates": 2,
        "dead_letters": 0,
        "since": {"duplicates": None, "dead_letters": None},  # of all time
        "rebuilding": False,
    }
    series = live.rate_series(client, keys, after)
    assert len(series) == live.RATE_BUCKETS and sum(p["stored"] for p in series) == 4


def _epoch(ts) -> int:
    return to_micros(ts) // 10**6


def test_the_rate_series_reads_the_counters(fake_redis):
    keys = Keys("txstream-test:")
    now = 1_700_000_005.5
    last = rate_bucket(now)
    fake_redis.set(keys.rate(last), 7)
    fake_redis.set(keys.rate(last - RATE_BUCKET), 3)
    fake_redis.set(keys.rate(last - RATE_BUCKET * live.RATE_BUCKETS), 1000)  # too old

    series = live.rate_series(fake_redis, keys, now)

    assert [p["stored"] for p in series[-3:]] == [0, 3, 7]
    assert sum(p["stored"] for p in series) == 10
    assert series[-1]["at"] == "2023-11-14T22:13:20.000000Z"


def test_the_rate_series_and_the_counts_add_up_the_partitions(fake_redis):
    keys = Keys("txstream-test:", partitions=3)
    now = 1_700_000_005.5
    last = rate_bucket(now)
    fake_redis.set(keys.rate(last, 0), 7)
    fake_redis.set(keys.rate(last, 2), 5)
    fake_redis.set(keys.rate(last - RATE_BUCKET, 1), 3)
    fake_redis.set(keys.rate(last, 1), "9" * 40)  # forged: counted as 0, as ever
    fake_redis.hset(keys.counts(0), mapping={"stored": 4, "duplicates": 1})
    fake_redis.hset(keys.counts(2), mapping={"stored": 6, "duplicates": "-2"})
    fake_redis.set(keys.dead_count, 2)
    for partition in range(3):
        fake_redis.set(keys.derived(partition), ALL)
    fake_redis.set(keys.dead_since, ALL)

    series = live.rate_series(fake_redis, keys, now)

    assert [p["stored"] for p in series[-3:]] == [0, 3, 7 + 5]
    assert live.counts(fake_redis, keys) == {
        "stored": 10,
        "duplicates": 1,
        "dead_letters": 2,
        "since": {"duplicates": None, "dead_letters": None},
        "rebuilding": False,
    }


def test_top_users_are_ranked_and_exact(app, client):
    now = app.config["CLOCK"]()
    seed(
        app,
        line(1, BIGGEST, now, "big1"),
        line(1, "0.01", now, "big2"),  # a float sum would lose this cent
        line(2, "-5000.00", now, "refund"),
        *(line(3, "1.00", now + k * _MICRO, f"many{k}") for k in range(5)),
        line(4, "20.00", now - timedelta(hours=7), "last-window"),
    )

    top = get_json(client, "/api/live")["top"]

    assert top["window_start"] == "2024-05-06T12:00:00.000000Z"
    exact = str(Decimal(BIGGEST) + Decimal("0.01"))
    assert top["by_sum"] == [
        {"user_id": 1, "count": 2, "sum": exact},
        {"user_id": 2, "count": 1, "sum": "-5000.00"},
        {"user_id": 3, "count": 5, "sum": "5.00"},
    ]
    assert [u["user_id"] for u in top["by_count"]] == [3, 1, 2]


def test_top_users_are_cached_for_every_worker(app, client):
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now, "one"))
    assert [u["user_id"] for u in get_json(client, "/api/live")["top"]["by_sum"]] == [1]

    seed(app, line(2, "9.00", now, "two"))
    assert [u["user_id"] for u in get_json(client, "/api/live")["top"]["by_sum"]] == [1]

    app.config["REDIS"].delete(
        keys_of(app).live_top(_epoch(now) // WINDOW_SECONDS * WINDOW_SECONDS)
    )
    assert [u["user_id"] for u in get_json(client, "/api/live")["top"]["by_sum"]] == [2, 1]


def test_counts_health_and_shape(app, client):
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now, "one"))
    body = get_json(client, "/api/live")
    assert body["counts"] == {
        "stored": 1,
        "duplicates": 0,
        "dead_letters": 0,
        "since": {"duplicates": None, "dead_letters": None},
        "rebuilding": False,
    }
    assert body["health"] == {"redis": "ok", "database": "ok"}
    assert body["subscribers"] == 0
    assert body["rate"]["bucket_seconds"] == RATE_BUCKET


@pytest.mark.parametrize(
    "forge",
    [
        lambda r, k, w: r.hset(k.counts(), mapping={"stored": "lots", "duplicates": "-4"}),
        lambda r, k, w: r.set(k.dead_count, "9" * 40),
        lambda r, k, w: r.set(k.live_top(w), "not json"),
        lambda r, k, w: r.set(k.live_top(w), json.dumps({"by_sum": 5})),
        lambda r, k, w: r.set(
            k.live_top(w),
            json.dumps(
                {
                    "window_start": format_time(from_micros(w * 10**6)),
                    "by_sum": [{"user_id": "<script>", "count": 1, "sum": "1e9"}],
                    "by_count": [],
                }
            ),
        ),
        lambda r, k, w: r.hset(k.subscriber("x"), mapping={"heartbeat_at": "soon", "pid": "-"}),
    ],
    ids=["counts", "dead-count", "cache", "cache-shape", "cache-rows", "heartbeat"],
)
def test_forged_keys_are_not_a_500(app, client, forge):
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now, "one"))
    forge(app.config["REDIS"], keys_of(app), _epoch(now) // WINDOW_SECONDS * WINDOW_SECONDS)
    body = get_json(client, "/api/live")
    assert [u["user_id"] for u in body["top"]["by_sum"]] in ([1], [])
    assert all(body["counts"][name] >= 0 for name in ("stored", "duplicates", "dead_letters"))


def test_a_key_of_another_type_is_a_503(app, client):
    app.config["REDIS"].rpush(keys_of(app).counts(), "x")
    body = get_json(client, "/api/live", status=503)
    assert "Redis refused a read" in body["error"]


@pytest.mark.parametrize("down", ["redis", "database"])
def test_an_outage_is_a_503(app, client, closed_port, down):
    if down == "redis":
        url = f"redis://127.0.0.1:{closed_port}/0"
        app.config["REDIS"] = redis.Redis.from_url(url, socket_connect_timeout=2)
    else:
        app.config["ENGINE"] = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/x")
    body = get_json(client, "/api/live", status=503)
    assert "unavailable" in body["error"]
    app.config["REDIS"].close()
    app.config["ENGINE"].dispose()


def test_the_console_page_has_its_parts_and_its_script(app, client):
    now = app.config["CLOCK"]()
    seed(app, line(11, "-1234.50", now, "newest"))

    response = client.get("/")
    page = response.get_data(as_text=True)

    assert response.status_code == 200
    for part in (
        'id="dashboard"',
        'data-live-url="/api/live"',
        'data-live="on"',
        'id="live-toggle" aria-pressed="false"',
        'aria-live="polite"',
        'id="live-rows"',
        'id="rate-chart"',
        'id="top-by-sum"',
        'id="top-by-count"',
        'id="count-stored"',
        'id="health-redis"',
    ):
        assert part in page
    assert re.search(r'<button type="button" id="live-toggle"', page)
    position = re.search(r'data-position="([^"]*)"', page)[1]
    with app.config["ENGINE"].connect() as conn:
        newest = conn.scalar(select(func.max(models.transactions.c.id)))
    assert live.decode_position(position) == newest
    assert '<script src="/static/app.js" defer></script>' in page
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert f'<time datetime="{format_time(now)}">' in page
    assert_no_inline_code(page)
    for script in ("app.js", "dashboard.js"):
        with client.get(f"/static/{script}") as response:
            assert response.status_code == 200


def test_an_older_page_is_not_live(app, client):
    now = app.config["CLOCK"]()
    seed(app, *(line(1, "1.00", now - k * _MICRO, f"t{k:03d}") for k in range(60)))
    first = client.get("/").get_data(as_text=True)
    older = re.search(r'<a rel="next" href="([^"]+)">Older</a>', first)[1].replace("&amp;", "&")
    assert 'data-live="off"' in client.get(older).get_data(as_text=True)
