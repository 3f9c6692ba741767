"""`make demo` on a machine with no Redis and no MySQL: fakeredis server + SQLite."""

from __future__ import annotations

import json
import signal
import urllib.request

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
