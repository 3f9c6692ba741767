"""End to end on the real Redis and MariaDB: the emitter and the subscriber as processes."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import urllib.request
from datetime import datetime
from decimal import Decimal

import pytest
from sqlalchemy import make_url

from app import create_app
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL, metric_samples, signed_in_client
from txstream.keys import Keys
from txstream.processes import Script, free_port, wait_until
from txstream.store import DEAD_LETTER_BYTES
from txstream.testing import (
    WINDOW_SECONDS,
    assert_recent_lists_match_db,
    assert_totals_match_raw_rows,
    count_rows,
    stored_transactions,
)
from txstream.wire import format_line, parse

pytestmark = pytest.mark.services

SEED_LINES = [  # the seed's example messages, exactly
    "1,-44690489068,1570358269.4836092",
    "2,20596488508,1570358272.48946",
    "1,-27269658564,1570358277.493473",
    "3,41603904384,1570358279.49744",
]
MALFORMED = [
    b"",
    b"1,2",
    b"0,10.00,1570358269",
    b"1,10.001,1570358269",
    b"1,abc,1570358269",
    b"1,10,nan",
    b"\xff\xfe,10,1570358269",
    b"1,10,1570358269,bad id",
    b"1," + b"9" * 1100 + b",1570358269",
    b"1,10,946684799.999999",  # before 2000
    b"1,10,253402300799,year-9999",  # after now + MAX_CLOCK_SKEW: its window end overflows
]


def subscriber_stream(key_prefix: str) -> str:
    """The test's stream: under its key prefix, so it is deleted with its other keys."""
    return key_prefix + "stream"


@pytest.fixture(params=["pubsub", "stream"])
def transport(request):
    """Each test taking this runs once per transport."""
    return request.param


@pytest.fixture
def send_raw(transport, redis_client, channel, key_prefix):
    """Send raw bytes the way the emitter would on `transport` (PUBLISH or XADD)."""
    if transport == "pubsub":
        return lambda raw: redis_client.publish(channel, raw)
    return lambda raw: redis_client.xadd(subscriber_stream(key_prefix), {"line": raw})


@pytest.fixture(params=["mysql+pymysql"])
def database_url(request):
    """The test database's URL with the driver name a test asks for (indirect)."""
    return make_url(TEST_DATABASE_URL).set(drivername=request.param).render_as_string(False)


@pytest.fixture
def subscriber_env(channel, key_prefix, transport, database_url):
    """The environment of the scripts under test: the test servers, channel and prefix."""
    return {
        "REDIS_URL": TEST_REDIS_URL,
        "DATABASE_URL": database_url,
        "TRANSPORT": transport,
        "CHANNEL": channel,
        "STREAM": subscriber_stream(key_prefix),
        "KEY_PREFIX": key_prefix,
        "WINDOW_HOURS": "6",
        "BATCH_INTERVAL_MS": "50",
    }


@pytest.fixture
def start_subscriber(run, subscriber_env, redis_client, mysql_engine):
    """Start sub_and_store.py with `extra_env`; return once it reads (or has subscribed)."""

    def start(*args: str, **extra_env: str) -> Script:
        script = run("sub_and_store.py", *args, env={**subscriber_env, **extra_env})
        script.wait_for_line(r"INFO sub_and_store: reading .*; waiting for transactions")
        return script

    return start


@pytest.fixture
def subscriber(start_subscriber):
    """A running sub_and_store.py, subscribed to the test channel."""
    return start_subscriber("--stats-interval", "0.2")


@pytest.mark.parametrize("database_url", ["mysql+pymysql", "mariadb+pymysql"], indirect=True)
def test_emitter_and_raw_messages_are_stored_exactly_once(
    subscriber, subscriber_env, send_raw, redis_client, mysql_engine, key_prefix
):
    emitter = Script(
        "emitter_and_pub.py",
        *("--count", "300", "--rate", "2000", "--users", "20", "--seed", "11"),
        env=subscriber_env,
    )
    assert emitter.wait() == 0, emitter.output
    emitted = [
        parse(m.group(1))
        for m in map(re.compile(r"INFO pub_transactions: (\S+,\S+,\S+,\S+)$").search, emitter.lines)
        if m
    ]
    assert len(emitted) == 300
    assert "published 300 transactions" in emitter.output
    for line in SEED_LINES:
        send_raw(line)
    for _ in range(2):  # the same txn_id twice: stored once
        send_raw("5,12.34,1570358300.5,repeated-id")
    for raw in MALFORMED:
        send_raw(raw)

    dead_key = Keys(key_prefix).dead
    wait_until(lambda: count_rows(mysql_engine) == 300 + 4 + 1, 30, "all rows stored")
    wait_until(lambda: redis_client.llen(dead_key) == len(MALFORMED), 10, "dead letters")
    subscriber.wait_for_line(r"stored=305 duplicates=1 dead=11 received=317")

    stored = {tx.txn_id: tx for tx in stored_transactions(mysql_engine)}
    for tx in emitted:
        assert stored[tx.txn_id] == tx
    seed_rows = sorted(
        (tx.user_id, tx.amount, tx.ts) for tx in stored.values() if tx.ts.year == 2019
    )
    assert seed_rows == [
        (1, Decimal("-44690489068.00"), datetime(2019, 10, 6, 10, 37, 49, 483609)),
        (1, Decimal("-27269658564.00"), datetime(2019, 10, 6, 10, 37, 57, 493473)),
        (2, Decimal("20596488508.00"), datetime(2019, 10, 6, 10, 37, 52, 489460)),
        (3, Decimal("41603904384.00"), datetime(2019, 10, 6, 10, 37, 59, 497440)),
        (5, Decimal("12.34"), datetime(2019, 10, 6, 10, 38, 20, 500000)),
    ]
    assert_totals_match_raw_rows(mysql_engine, WINDOW_SECONDS)
    assert_recent_lists_match_db(mysql_engine, redis_client, key_prefix)

    dead = [json.loads(item) for item in redis_client.lrange(dead_key, 0, -1)]
    assert [d["raw"] for d in dead] == [
        raw.decode("utf-8", "backslashreplace") for raw in MALFORMED
    ]
    assert dead[6]["raw"] == "\\xff\\xfe,10,1570358269"
    assert all(d["reason"].startswith("timestamp out of range (") for d in dead[-2:])
    assert all(d["reason"] and re.fullmatch(r"\d{4}-.*T.*Z", d["at"]) for d in dead)

    assert subscriber.stop(signal.SIGTERM) == 0
    assert "stopped on SIGTERM" in subscriber.output


def test_a_txn_id_again_with_other_values_is_a_dead_letter_an_exact_repeat_a_duplicate(
    subscriber, send_raw, redis_client, mysql_engine, key_prefix
):
    first = "5,12.34,1570358300.5,same-id"
    conflicting = [
        "6,12.34,1570358300.5,same-id",
        "5,12.35,1570358300.5,same-id",
        "5,12.34,1570358300.500001,same-id",
    ]
    for raw in [first, first, *conflicting, first]:
        send_raw(raw)
    subscriber.wait_for_line(r"stored=1 duplicates=2 dead=3 received=6")
    assert stored_transactions(mysql_engine) == [parse(first)]
    dead = [json.loads(item) for item in redis_client.lrange(Keys(key_prefix).dead, 0, -1)]
    differ = ["user_id differs", "amount differs", "time differs"]
    assert [(d["raw"], d["reason"]) for d in dead] == [
        (format_line(parse(raw)), f"conflicts with the stored transaction: its {what}")
        for raw, what in zip(conflicting, differ, strict=True)
    ]
    assert re.search(r"WARNING .*txn_id same-id came again with another amount", subscriber.output)
    assert_totals_match_raw_rows(mysql_engine, WINDOW_SECONDS)
    assert_recent_lists_match_db(mysql_engine, redis_client, key_prefix)


def test_a_5_mb_message_is_a_small_dead_letter_and_stalls_nothing(
    subscriber, transport, send_raw, redis_client, mysql_engine, key_prefix
):
    huge = b"1,1.00,1570358269," + b"\xff" * (5 << 20)  # 20 MB once escaped
    send_raw(huge)
    send_raw("1,1.00,1570358270,after-the-huge-one")
    subscriber.wait_for_line(r"stored=1 duplicates=0 dead=1 received=2")
    assert [tx.txn_id for tx in stored_transactions(mysql_engine)] == ["after-the-huge-one"]
    (item,) = redis_client.lrange(Keys(key_prefix).dead, 0, -1)
    assert len(item) <= DEAD_LETTER_BYTES
    letter = json.loads(item)
    assert 1000 < letter["kept"] < 4096
    assert letter | {"at": "-"} == {
        "raw": huge[: letter["kept"]].decode("utf-8", "backslashreplace"),
        "kept": letter["kept"],
        "size": len(huge),
        "sha256": hashlib.sha256(huge).hexdigest(),
        "reason": "line longer than 1024 bytes",
        "at": "-",
    }
    if transport == "stream":
        stream = subscriber_stream(key_prefix)
        wait_until(lambda: redis_client.xpending(stream, "store")["pending"] == 0, 10, "acks")


def test_endpoints_serve_what_the_subscriber_stored(
    subscriber, send_raw, redis_client, mysql_engine, key_prefix
):
    for line in SEED_LINES:
        send_raw(line)
    wait_until(lambda: count_rows(mysql_engine) == 4, 30, "the seed lines stored")
    wait_until(lambda: redis_client.llen(Keys(key_prefix).recent(1)) == 2, 10, "recent list")
    app = create_app(
        {
            "TESTING": True,
            "ENGINE": mysql_engine,
            "REDIS": redis_client,
            "KEY_PREFIX": key_prefix,
            "WINDOW_HOURS": Decimal(6),
            "CLOCK": lambda: datetime(2019, 10, 6, 12, 0, 0),
        }
    )
    client = signed_in_client(app)

    summary = client.get("/api/users/1/sum?hours=6").get_json()
    assert summary["count"] == 2
    assert summary["sum"] == "-71960147632.00"
    assert summary["to"] == "2019-10-06T12:00:00.000000Z"

    listed = client.get("/api/users/1/transactions?limit=1").get_json()
    assert [i["amount"] for i in listed["items"]] == ["-27269658564.00"]
    older = client.get(f"/api/users/1/transactions?limit=1&before={listed['next']}").get_json()
    assert [i["amount"] for i in older["items"]] == ["-44690489068.00"]
    assert older["next"] is None

    recent = client.get("/api/users/1/recent").get_json()["items"]
    assert [i["amount"] for i in recent] == ["-27269658564.00", "-44690489068.00"]
    windows = client.get("/api/users/1/windows").get_json()["items"]
    assert [(w["tx_count"], w["amount_sum"]) for w in windows] == [(2, "-71960147632.00")]
    everyone = client.get("/api/transactions?limit=2").get_json()["items"]
    assert [i["user_id"] for i in everyone] == [3, 1]
    assert client.get("/healthz").get_json() == {"redis": "ok", "database": "ok"}
    assert b"-27269658564.00" in client.get("/users/1").data
    assert b"41603904384.00" in client.get("/").data


def test_sigterm_stores_the_pending_batch(start_subscriber, send_raw, mysql_engine):
    script = start_subscriber(
        "--stats-interval", "0.1", BATCH_INTERVAL_MS="600000", BATCH_SIZE="1000"
    )
    for line in SEED_LINES[:3]:
        send_raw(line)
    script.wait_for_line(r"stored=0 duplicates=0 dead=0 received=3")
    assert count_rows(mysql_engine) == 0  # still pending in the batch
    assert script.stop(signal.SIGTERM) == 0, script.output
    assert count_rows(mysql_engine) == 3
    assert "storing the last 3 message(s)" in script.output


@pytest.mark.parametrize("transport", ["stream"], indirect=True)
def test_redelivered_stream_entries_are_not_stored_twice(
    subscriber, subscriber_env, send_raw, redis_client, mysql_engine, key_prefix
):
    # A group that reads nothing: the subscriber trims only what every group acknowledged,
    # so every entry stays in the stream, to be handed out again below.
    redis_client.xgroup_create(subscriber_env["STREAM"], "reads-nothing", id="0")
    emitter = Script(
        "emitter_and_pub.py", *("--count", "500", "--rate", "0", "--quiet"), env=subscriber_env
    )
    assert emitter.wait() == 0, emitter.output
    send_raw(SEED_LINES[0])  # no txn_id: one is derived from the entry id
    wait_until(lambda: count_rows(mysql_engine) == 501, 30, "all rows stored")
    subscriber.wait_for_line(r"stored=501 duplicates=0 ")

    # Hand every entry out again, as after a crash between commit and ack.
    redis_client.xgroup_setid(subscriber_env["STREAM"], "store", "0")
    subscriber.wait_for_line(r"stored=501 duplicates=501 ")
    assert count_rows(mysql_engine) == 501
    assert_totals_match_raw_rows(mysql_engine, WINDOW_SECONDS)
    assert_recent_lists_match_db(mysql_engine, redis_client, key_prefix)
    assert redis_client.xpending(subscriber_env["STREAM"], "store")["pending"] == 0


@pytest.mark.parametrize("transport", ["pubsub"], indirect=True)
def test_a_lost_pubsub_connection_is_logged_counted_and_recovered(
    subscriber, send_raw, redis_client, mysql_engine
):
    name = f"sub_and_store-{subscriber.proc.pid}"
    pubsub_client = wait_until(
        lambda: next(
            (c for c in redis_client.client_list() if c["name"] == name and c["sub"] != "0"),
            None,
        ),
        10,
        "the subscriber's pub/sub connection",
    )
    redis_client.client_kill_filter(_id=pubsub_client["id"])
    subscriber.wait_for_line(r"ERROR txstream.transport: pub/sub connection lost")
    subscriber.wait_for_line(r"disconnects=1 ")
    send_raw(SEED_LINES[0])  # after the reconnect, messages arrive again
    wait_until(lambda: count_rows(mysql_engine) == 1, 20, "a message after the reconnect")


@pytest.mark.parametrize("transport", ["pubsub"], indirect=True)
def test_sigterm_while_the_database_is_down_says_what_was_not_stored(
    start_subscriber, send_raw, private_mariadb
):
    script = start_subscriber(DATABASE_URL=private_mariadb.url)
    private_mariadb.stop()
    for line in SEED_LINES[:2]:
        send_raw(line)
    script.wait_for_line(r"database unavailable \(")
    assert script.stop(signal.SIGTERM, timeout=30) == 1
    script.wait_for_line(r"stopped with 2 messages not stored \(they are LOST\)")


@pytest.fixture
def refused_txn_id(mysql_engine):
    """A txn_id the test database refuses to store, with an error that is no outage."""
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON transactions FOR EACH ROW "
            "BEGIN IF NEW.txn_id = 'poison' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'; END IF; END"
        )
    yield "poison"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_poison")


def test_a_batch_that_fails_unexpectedly_is_never_silently_lost(
    transport, start_subscriber, send_raw, redis_client, mysql_engine, key_prefix, refused_txn_id
):
    """Logged with its traceback; from the stream it is delivered again, tried alone after
    MAX_DELIVERIES and then a dead letter saying why; from pub/sub its lines become dead
    letters at once. The subscriber goes on with the next batch."""
    script = start_subscriber(
        "--stats-interval", "0.2", CLAIM_IDLE_MS="300", MAX_DELIVERIES="2", BATCH_SIZE="1"
    )
    send_raw("1,1.00,1570358269,before")
    wait_until(lambda: count_rows(mysql_engine) == 1, 20, "the first transaction stored")
    poison = f"1,2.00,1570358270,{refused_txn_id}"
    send_raw(poison)
    script.wait_for_line(r"could not store a batch of 1 messages: OperationalError: .*injected")
    send_raw("1,3.00,1570358271,after")
    wait_until(lambda: count_rows(mysql_engine) == 2, 20, "the next transaction stored")

    dead_key = Keys(key_prefix).dead
    wait_until(lambda: redis_client.llen(dead_key) == 1, 20, "the dead letter")
    (letter,) = [json.loads(item) for item in redis_client.lrange(dead_key, 0, -1)]
    assert letter["raw"] == poison
    if transport == "stream":
        assert letter["reason"] == (
            "delivered 3 times (MAX_DELIVERIES=2), "
            "not stored: OperationalError: (1644, 'injected failure')"
        )
        stream = subscriber_stream(key_prefix)
        wait_until(lambda: redis_client.xpending(stream, "store")["pending"] == 0, 10, "acks")
    else:
        assert re.fullmatch(
            r"not stored: OperationalError: \(1644, 'injected failure'\)", letter["reason"]
        )
    assert "Traceback (most recent call last)" in script.output
    assert [tx.txn_id for tx in stored_transactions(mysql_engine)] == ["before", "after"]
    assert script.stop(signal.SIGTERM) == 0, script.output


@pytest.mark.parametrize("transport", ["stream"], indirect=True)
def test_a_poison_entry_holds_up_no_other_entry_of_its_batch(
    start_subscriber, send_raw, redis_client, mysql_engine, key_prefix, refused_txn_id
):
    """The database refuses a whole batch for one of its entries: the batch is delivered
    again, and after MAX_DELIVERIES each entry is tried alone. The others are stored, not
    called dead letters; the poison one is a dead letter that says why."""
    good = [f"{i},1.00,1570358269,good-{i}" for i in range(1, 6)]
    poison = f"9,2.00,1570358270,{refused_txn_id}"
    for line in [*good[:2], poison, *good[2:]]:  # in the stream before the subscriber reads
        send_raw(line)
    script = start_subscriber(CLAIM_IDLE_MS="300", MAX_DELIVERIES="2")

    wait_until(lambda: count_rows(mysql_engine) == len(good), 30, "the good ones stored")
    dead_key = Keys(key_prefix).dead
    wait_until(lambda: redis_client.llen(dead_key) == 1, 20, "the dead letter")
    (letter,) = [json.loads(item) for item in redis_client.lrange(dead_key, 0, -1)]
    assert letter["raw"] == poison
    assert letter["reason"] == (
        "delivered 3 times (MAX_DELIVERIES=2), "
        "not stored: OperationalError: (1644, 'injected failure')"
    )
    stream = subscriber_stream(key_prefix)
    wait_until(lambda: redis_client.xpending(stream, "store")["pending"] == 0, 10, "acks")
    assert [tx.txn_id for tx in stored_transactions(mysql_engine)] == [
        f"good-{i}" for i in range(1, 6)
    ]
    assert script.stop(signal.SIGTERM) == 0, script.output


def test_the_subscribers_metrics_count_what_it_stored(
    start_subscriber, send_raw, transport, redis_client, mysql_engine, key_prefix
):
    port = free_port()
    subscriber = start_subscriber("--metrics-port", str(port))
    subscriber.wait_for_line(rf"INFO sub_and_store: metrics on http://127\.0\.0\.1:{port}/metrics")
    count, repeats = 40, 5
    lines = [f"{i % 7 + 1},{i}.25,{1570358269 + i},metrics-{i}" for i in range(count)]
    for line in lines:
        send_raw(line)
    wait_until(lambda: count_rows(mysql_engine) == count, 30, "the rows stored")
    for line in lines[:repeats]:
        send_raw(line)
    for raw in MALFORMED:
        send_raw(raw)

    def scrape() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:  # nosec B310
            return metric_samples(reply.read().decode())

    expected = {
        ("txstream_messages_received_total", ()): count + repeats + len(MALFORMED),
        ("txstream_transactions_stored_total", ()): count,
        ("txstream_duplicates_total", ()): repeats,
        ("txstream_dead_letters_total", ()): len(MALFORMED),
        ("txstream_outages_total", (("service", "redis"),)): 0,
        ("txstream_outages_total", (("service", "database"),)): 0,
    }
    if transport == "stream":  # all acknowledged: nothing pending, nothing left to deliver
        expected |= {("txstream_stream_pending", ()): 0, ("txstream_stream_lag", ()): 0}
    found = wait_until(
        lambda: (m := scrape()) and all(m.get(k) == v for k, v in expected.items()) and m,
        30,
        f"the metrics {expected}",
    )
    assert count_rows(mysql_engine) == count == found[("txstream_transactions_stored_total", ())]
    assert found[("txstream_batch_size_count", ())] >= 2
    assert found[("txstream_batch_size_sum", ())] == count + repeats + len(MALFORMED)
    assert found[("txstream_commit_seconds_count", ())] >= 2
    assert 0 < found[("txstream_commit_seconds_sum", ())] < 30
    assert subscriber.stop() == 0, subscriber.output


def test_a_subscriber_whose_metrics_port_is_taken_says_so_and_exits_2(run, subscriber_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = run("sub_and_store.py", env={**subscriber_env, "METRICS_PORT": str(port)})
        assert script.wait(30) == 2, script.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in script.output
    assert "give each subscriber a METRICS_PORT (--metrics-port) of its own" in script.output
