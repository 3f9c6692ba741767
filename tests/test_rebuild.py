"""Changing the window: `flask --app app rebuild-windows` rebuilds the aggregates beside the
old ones and swaps them in at once; it refuses while a subscriber runs; a web app or
subscriber of another WINDOW_HOURS refuses to start, naming it."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import inspect

import config
from models import settings
from tests.helpers import TEST_SECRET_KEY, signed_in_client
from txstream import rebuild
from txstream.aggregates import Layout, recorded_layout
from txstream.heartbeats import HEARTBEAT_INTERVAL, LIVE_BEATS, Heartbeat
from txstream.keys import Keys
from txstream.store import Store
from txstream.testing import assert_totals_match_raw_rows
from txstream.times import format_time, utcnow
from txstream.transaction import Transaction

NOW = datetime(2026, 11, 29, 14, 37, 21, 123456)  # inside an hour and a 6-hour window
HOUR = 3600


def make_app(engine, client, key_prefix, window_hours, now=NOW):
    from app import create_app  # here, not at the top: importing `app` builds an app

    return create_app(
        {
            "TESTING": True,
            "ENGINE": engine,
            "REDIS": client,
            "KEY_PREFIX": key_prefix,
            "WINDOW_HOURS": Decimal(window_hours),
            "CLOCK": lambda: now,
            "SECRET_KEY": TEST_SECRET_KEY,
            "RATE_LIMIT": "1000000/minute",
        }
    )


def stored(engine, client, key_prefix, window_hours, n=600) -> list[Transaction]:
    """`n` transactions of users 1-3 over the two days before NOW, stored by a subscriber
    of `window_hours`: user 1 has more than FEW_ROWS in a day, so its sums read aggregates."""
    rng = random.Random(11)  # nosec B311 # made-up rows, the same every run
    txns = [
        Transaction(
            f"r{i}",
            rng.choice([1, 1, 2, 3]),
            Decimal(rng.randint(-50_000, 900_000)).scaleb(-2),
            NOW - timedelta(microseconds=rng.randint(0, 2 * 86400 * 10**6)),
        )
        for i in range(n)
    ]
    store = Store(engine, client, Keys(key_prefix), window_hours * HOUR)
    for i in range(0, n, 200):
        store.commit(txns[i : i + 200])
    return txns


def assert_sums_right(app, txns, hours_list=("0.5", "5", "7.25", "30", "48")) -> None:
    client = signed_in_client(app)
    for hours in hours_list:
        body = client.get(f"/api/users/1/sum?hours={hours}").get_json()
        start = NOW - timedelta(hours=float(hours))
        amounts = [t.amount for t in txns if t.user_id == 1 and start < t.ts <= NOW]
        assert (body["count"], Decimal(body["sum"])) == (len(amounts), sum(amounts)), hours


def rebuild_windows(app, *args):
    return app.test_cli_runner().invoke(args=["rebuild-windows", *args])


def test_rebuild_from_6_hours_to_1_and_back(backend, key_prefix):
    engine, client = backend
    txns = stored(engine, client, key_prefix, 6)
    six = make_app(engine, client, key_prefix, 6)
    assert_sums_right(six, txns)

    result = rebuild_windows(six, "--hours", "1")

    assert result.exit_code == 0, result.output
    assert f"Done: {len(txns)} of {len(txns)} rows" in result.output
    assert "Start the subscribers and web apps with WINDOW_HOURS=1" in result.output
    assert_totals_match_raw_rows(engine, HOUR)  # and the layout recorded
    assert_sums_right(six, txns)  # the running app, which had cached 6 h
    one = make_app(engine, client, key_prefix, 1)
    assert_sums_right(one, txns)

    result = rebuild_windows(one)  # --hours defaults to WINDOW_HOURS
    assert result.exit_code == 0, result.output
    assert_totals_match_raw_rows(engine, HOUR)
    result = rebuild_windows(one, "--hours", "6")

    assert result.exit_code == 0, result.output
    assert_totals_match_raw_rows(engine, 6 * HOUR)
    assert_sums_right(one, txns)
    assert_sums_right(six, txns)
    names = set(inspect(engine).get_table_names())
    assert not {n for n in names if n.endswith((rebuild.NEW, rebuild.OLD))}
    # The subscriber of the new window stores on; the old one is refused.
    Store(engine, client, Keys(key_prefix), 6 * HOUR).commit(
        [Transaction("after", 1, Decimal("1.00"), NOW)]
    )
    assert_totals_match_raw_rows(engine, 6 * HOUR)


def test_rebuild_shows_its_progress_and_keeps_other_settings(backend, key_prefix):
    engine, client = backend
    txns = stored(engine, client, key_prefix, 6, n=50)
    app = make_app(engine, client, key_prefix, 6)
    with engine.begin() as conn:
        conn.execute(settings.insert(), {"name": "other", "value": "kept"})

    result = rebuild_windows(app, "--hours", "0.5")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Rebuilding the aggregates of 50 rows: windows of 0.5 h, buckets of 60 s"
    assert lines[1].startswith("rows")  # the bar's label (the bar itself only on a terminal)
    assert "Done: 50 of 50 rows" in lines[-2]
    assert_totals_match_raw_rows(engine, HOUR // 2)
    with engine.connect() as conn:
        assert conn.execute(settings.select()).all().count(("other", "kept")) == 1
    assert len(txns) == 50


def test_progress_is_reported_per_chunk(sqlite_engine, fake_redis, key_prefix, monkeypatch):
    stored(sqlite_engine, fake_redis, key_prefix, 6, n=250)
    monkeypatch.setattr("txstream.store._REBUILD_CHUNK", 100)
    with sqlite_engine.connect() as conn:
        mark = rebuild.rows_mark(conn)
    done: list[int] = []

    rebuild.rebuild(sqlite_engine, Layout.for_window(HOUR), mark, done.append)

    assert done == [100, 100, 50]
    assert_totals_match_raw_rows(sqlite_engine, HOUR)


@pytest.mark.parametrize("hours", ["0", "-1", "nan", "8761", "1.00001", "six"])
def test_rebuild_refuses_a_bad_window(app, hours):
    result = rebuild_windows(app, "--hours", hours)

    assert result.exit_code == 2
    assert "Invalid value for --hours: WINDOW_HOURS must be" in result.output


def test_rebuild_refuses_while_a_subscriber_is_live(backend, key_prefix):
    engine, client = backend
    txns = stored(engine, client, key_prefix, 6, n=20)
    app = make_app(engine, client, key_prefix, 6)
    keys = Keys(key_prefix)
    heartbeat = Heartbeat(client, keys, "host-1:4242", "stream", lambda: (20, None))
    heartbeat.beat()  # as a running subscriber does every 5 s

    result = rebuild_windows(app, "--hours", "1")

    assert result.exit_code == 1
    assert "subscribers are running (host-1:4242)" in result.output
    assert "Stop every subscriber" in result.output
    assert_totals_match_raw_rows(engine, 6 * HOUR)  # untouched
    assert not [n for n in inspect(engine).get_table_names() if n.endswith(rebuild.NEW)]
    # Once its heartbeat is old (the subscriber stopped), the rebuild runs.
    old = utcnow() - timedelta(seconds=LIVE_BEATS * HEARTBEAT_INTERVAL + 1)
    client.hset(keys.subscriber("host-1:4242"), "heartbeat_at", format_time(old))
    assert rebuild_windows(app, "--hours", "1").exit_code == 0
    assert_totals_match_raw_rows(engine, HOUR)
    assert len(txns) == 20


def test_rebuild_refuses_when_redis_cannot_tell(app, closed_port, sqlite_engine):
    import redis

    app.config["REDIS"] = redis.Redis(port=closed_port, socket_connect_timeout=1)

    result = rebuild_windows(app, "--hours", "1")

    assert result.exit_code == 1
    assert "cannot read the subscribers' heartbeats from Redis" in result.output


def test_rows_stored_during_the_rebuild_stop_the_swap(backend, key_prefix):
    engine, client = backend
    stored(engine, client, key_prefix, 6, n=30)
    store = Store(engine, client, Keys(key_prefix), 6 * HOUR)
    with engine.connect() as conn:
        mark = rebuild.rows_mark(conn)

    def meanwhile(n: int) -> None:  # a subscriber that was not stopped
        store.commit([Transaction("late", 2, Decimal("3.00"), NOW)])

    with pytest.raises(rebuild.RebuildRefused, match="rows were stored during the rebuild"):
        rebuild.rebuild(engine, Layout.for_window(HOUR), mark, meanwhile)

    assert_totals_match_raw_rows(engine, 6 * HOUR)  # the old aggregates, with the late row
    names = inspect(engine).get_table_names()
    assert not [n for n in names if n.endswith((rebuild.NEW, rebuild.OLD))]


def test_a_web_app_of_another_window_refuses_to_start(sqlite_engine, fake_redis, key_prefix):
    stored(sqlite_engine, fake_redis, key_prefix, 6, n=5)

    with pytest.raises(config.ConfigError) as refused:
        make_app(sqlite_engine, fake_redis, key_prefix, 1)

    assert "windows of 6 h, buckets of 60 s, not windows of 1 h" in str(refused.value)
    assert "`flask --app app rebuild-windows --hours 1`" in str(refused.value)
    make_app(sqlite_engine, fake_redis, key_prefix, 6)  # the recorded one: starts


def test_a_web_app_starts_while_the_database_is_down(closed_port, fake_redis, caplog):
    import models

    engine = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/txstream")
    with caplog.at_level(logging.WARNING, logger="app"):
        app = make_app(engine, fake_redis, "p:", 1)

    assert app.config["ENGINE"] is engine
    assert "cannot read the aggregates' layout now, starting anyway" in caplog.text
    engine.dispose()


def test_init_db_names_the_rebuild(sqlite_engine, fake_redis, key_prefix):
    stored(sqlite_engine, fake_redis, key_prefix, 6, n=5)
    app = make_app(sqlite_engine, fake_redis, key_prefix, 6)
    app.config["WINDOW_HOURS"] = Decimal(2)

    result = app.test_cli_runner().invoke(args=["init-db"])

    assert result.exit_code == 1
    assert "rebuild the aggregates with `flask --app app rebuild-windows --hours 2`" in (
        result.output
    )
    with sqlite_engine.connect() as conn:
        assert recorded_layout(conn) == Layout.for_window(6 * HOUR)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["/srv/.venv/bin/flask", "--app", "app", "rebuild-windows", "--hours", "1"], True),
        (["/usr/lib/python3/site-packages/flask/__main__.py", "--app", "app", "init-db"], True),
        (["/srv/.venv/bin/flask", "--app", "app", "run"], False),
        (["/srv/.venv/bin/gunicorn", "app:app"], False),
        (["/srv/.venv/bin/pytest", "-q"], False),
    ],
)
def test_only_the_flask_commands_start_whatever_the_window(argv, command):
    from app import running_a_command

    assert running_a_command(argv) is command


def test_rebuild_of_an_empty_database_records_the_layout(app, sqlite_engine):
    result = rebuild_windows(app, "--hours", "2")

    assert result.exit_code == 0, result.output
    assert "Done: 0 of 0 rows" in result.output
    with sqlite_engine.connect() as conn:
        assert recorded_layout(conn) == Layout.for_window(2 * HOUR)


def test_rebuild_without_the_tables_says_so(app, tmp_path):
    import models

    app.config["ENGINE"] = models.make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")

    result = rebuild_windows(app, "--hours", "2")

    assert result.exit_code == 1
    assert "Error: the database failed: no such table: transactions" in result.output
    app.config["ENGINE"].dispose()
