"""The scripts while Redis does not answer: they retry, say so, and stop cleanly on SIGTERM."""

from __future__ import annotations

import signal

import models
from txstream.aggregates import Layout
from txstream.processes import Script
from txstream.store import ensure_layout


def test_subscriber_waiting_for_redis_stops_at_once_on_sigterm(tmp_path, closed_port):
    subscriber = Script(
        "sub_and_store.py",
        env={
            "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "TRANSPORT": "pubsub",
        },
    )
    try:
        subscriber.wait_for_line(r"WARNING txstream.runtime: redis unavailable")
        assert subscriber.stop(signal.SIGTERM, timeout=5) == 0, subscriber.output
        assert "stopped before Redis answered" in subscriber.output
    finally:
        subscriber.kill()


def test_emitter_keeps_what_it_could_not_send_and_says_so(closed_port):
    emitter = Script(
        "emitter_and_pub.py",
        *("--rate", "200", "--quiet", "--transport", "stream"),
        env={"REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"},
    )
    try:
        kept = emitter.wait_for_line(r"redis unavailable \(.*\); (\d+) transactions kept")
        assert int(kept.group(1)) >= 1
        assert emitter.stop(signal.SIGTERM, timeout=15) == 1  # some were never sent
        summary = emitter.wait_for_line(r"published 0 transactions .* (\d+) not sent")
        assert int(summary.group(1)) >= int(kept.group(1))
    finally:
        emitter.kill()


def test_subscriber_refuses_a_database_it_does_not_run_on(closed_port):
    subscriber = Script(
        "sub_and_store.py",
        env={
            "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0",
            "DATABASE_URL": "postgresql://root@127.0.0.1/txstream",
        },
    )
    assert subscriber.wait(30) == 2
    assert "DATABASE_URL: txstream runs on MySQL, MariaDB or SQLite, not 'postgresql'" in (
        subscriber.output
    )


def test_subscriber_refuses_a_database_kept_with_another_window(tmp_path, closed_port):
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = models.make_engine(database_url)
    models.create_schema(engine)
    ensure_layout(engine, Layout.for_window(6 * 3600))  # as a first subscriber does
    engine.dispose()
    subscriber = Script(
        "sub_and_store.py",
        env={
            "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0",
            "DATABASE_URL": database_url,
            "WINDOW_HOURS": "1",
        },
    )
    assert subscriber.wait(30) == 2
    assert (
        "cannot store: the database's aggregates are of windows of 6 h, buckets of 60 s, "
        "not windows of 1 h, buckets of 60 s: set WINDOW_HOURS=6" in subscriber.output
    )
    assert "rebuild the aggregates with `flask --app app rebuild-windows --hours 1`" in (
        subscriber.output
    )
