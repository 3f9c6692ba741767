"""`make demo` on a machine with no Redis and no MySQL: fakeredis server + SQLite."""

from __future__ import annotations

import json
import signal
import urllib.request

from sqlalchemy import func, select

import models
from txstream import tokens
from txstream.processes import Script, free_port, wait_until


def get_json(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return json.load(r)


def test_demo_runs_emitter_subscriber_and_web_app_without_servers(tmp_path):
    port = free_port()
    demo = Script(
        *("-m", "txstream.demo", "--port", str(port), "--rate", "50", "--data-dir", str(tmp_path)),
        env={"REDIS_URL": "", "DATABASE_URL": ""},  # unset: the embedded defaults
    )
    try:
        demo.wait_for_line(rf"Web +http://127\.0\.0\.1:{port}/login ", timeout=90)
        curl = demo.wait_for_line(r'API +curl -H "Authorization: Bearer (txs_\S+)" http://\S+')
        token = curl.group(1)
        assert "embedded fakeredis server at redis://127.0.0.1:" in demo.output
        assert f"SQLite file {tmp_path / 'demo.sqlite3'}" in demo.output
        base = f"http://127.0.0.1:{port}"
        latest = wait_until(
            lambda: get_json(f"{base}/api/transactions?limit=5", token)["items"],
            30,
            "transactions stored by the subscriber and served by the web app",
        )
        user = latest[0]["user_id"]

        def recent_are_stored() -> bool:
            # Redis is written after the commit: read it first, then what is stored.
            recent = get_json(f"{base}/api/users/{user}/recent", token)["items"]
            stored = get_json(f"{base}/api/users/{user}/transactions?limit=50", token)["items"]
            return bool(recent) and all(item in stored for item in recent)

        wait_until(recent_are_stored, 10, "the user's recent list in Redis")
        assert get_json(f"{base}/healthz") == {"redis": "ok", "database": "ok"}
        assert demo.stop(signal.SIGINT, timeout=30) == 0, demo.output
        assert "[subscriber]" in demo.output and "stopped on SIGTERM" in demo.output
        assert "; 0 had no subscriber" in demo.output  # started after the subscriber
        assert "Traceback" not in demo.output and "redis unavailable" not in demo.output
        engine = models.make_engine(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
        assert tokens.listed(engine) == []  # the run's token is revoked with it
        engine.dispose()
    finally:
        demo.kill()


def run_demo(tmp_path, rate: str, users: str) -> tuple[Script, str, str]:
    """The demo on the data directory `tmp_path`: the script, its base URL and token."""
    port = free_port()
    demo = Script(
        *("-m", "txstream.demo", "--port", str(port), "--data-dir", str(tmp_path)),
        *("--rate", rate, "--users", users),
        env={"REDIS_URL": "", "DATABASE_URL": "", "RATE_LIMIT": "100000/minute"},
    )
    curl = demo.wait_for_line(r'API +curl -H "Authorization: Bearer (txs_\S+)" http://\S+', 90)
    return demo, f"http://127.0.0.1:{port}", curl.group(1)


def test_a_restarted_demo_shows_the_lists_and_counts_its_new_redis_lost(tmp_path):
    demo, base, token = run_demo(tmp_path, rate="100", users="5")
    try:

        def stored_enough() -> int | None:
            stored = get_json(f"{base}/api/live", token)["counts"]["stored"]
            return stored if stored >= 100 else None

        wait_until(stored_enough, 30, "100 transactions stored")
        assert demo.stop(signal.SIGINT, timeout=30) == 0, demo.output
    finally:
        demo.kill()
    engine = models.make_engine(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(models.transactions))
    engine.dispose()

    # The SQLite file is kept, the embedded Redis is new; a transaction every 10 s per user.
    demo, base, token = run_demo(tmp_path, rate="0.5", users="5")
    try:

        def right() -> bool:
            live = get_json(f"{base}/api/live", token)["counts"]
            lists = [
                (
                    get_json(f"{base}/api/users/{user}/recent", token)["items"],
                    get_json(f"{base}/api/users/{user}/transactions?limit=5", token)["items"],
                )
                for user in range(1, 6)
            ]
            rebuilt = live["stored"] >= before and not live["rebuilding"]
            return rebuilt and all(recent == stored for recent, stored in lists)

        wait_until(right, 15, "the lists and the stored count rebuilt from the SQLite file", 0.2)
        since = get_json(f"{base}/api/live", token)["counts"]["since"]
        assert since["duplicates"] and since["dead_letters"]  # this Redis's counts only
        assert "rebuilt Redis's recent lists of 5 users" in demo.output
        assert demo.stop(signal.SIGINT, timeout=30) == 0, demo.output
        assert "Traceback" not in demo.output
    finally:
        demo.kill()
