"""Prometheus metrics: the web app's /metrics (one process and gunicorn's many), the
subscriber's collectors. The subscriber's own server is tested end to end in test_pipeline."""

from __future__ import annotations

import os
import runpy
import subprocess  # nosec B404 # runs this Python on a fixed script
import sys
import textwrap
from types import SimpleNamespace

import pytest
import redis
from prometheus_client import generate_latest

from app import create_app
from tests.helpers import metric_samples as samples
from txstream.metrics import UNMATCHED, StreamBacklog, SubscriberMetrics
from txstream.processes import ROOT, Script
from txstream.runtime import Outage


def requests(scrape: dict, route: str, method: str = "GET", status: str = "200") -> float:
    """txstream_http_requests_total of one route, method and status (0 when absent)."""
    labels = (("method", method), ("route", route), ("status", status))
    return scrape.get(("txstream_http_requests_total", labels), 0)


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain; version=")
    return samples(response.text)


def test_metrics_need_a_token_when_auth_is_on(anonymous):
    response = anonymous.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_count_and_time_requests_by_route_rule(client):
    for user in (1, 2, 3):
        assert client.get(f"/api/users/{user}/sum").status_code == 200
    assert client.get("/no/such/page/1").status_code == 404
    assert client.get("/no/such/page/2").status_code == 404
    assert client.open("/api/transactions", method="BREW").status_code == 405
    found = scrape(client)
    rule = "/api/users/<user_id>/sum"
    assert requests(found, rule) == 3
    assert requests(found, UNMATCHED, status="404") == 2  # one label for every unknown path
    assert requests(found, UNMATCHED, "other", "405") == 1  # any token is a method
    assert not [key for key in found if "/api/users/1/sum" in str(key)]  # never the raw path
    count = ("txstream_http_request_duration_seconds_count", (("method", "GET"), ("route", rule)))
    assert found[count] == 3
    total = ("txstream_http_request_duration_seconds_sum", (("method", "GET"), ("route", rule)))
    assert 0 < found[total] < 30


def test_without_auth_metrics_are_open(sqlite_engine, fake_redis):
    app = create_app({"TESTING": True, "ENGINE": sqlite_engine, "REDIS": fake_redis, "AUTH": False})
    client = app.test_client()
    client.get("/nowhere")
    assert requests(scrape(client), UNMATCHED, status="404") == 1


# A gunicorn worker, in short: an app of its own that answers `n` requests, in a process of its
# own, with PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported.
WORKER = textwrap.dedent(
    """
    import sys
    import fakeredis, models
    from app import create_app
    engine = models.make_engine("sqlite://")
    app = create_app({"ENGINE": engine, "REDIS": fakeredis.FakeRedis(), "AUTH": False})
    client = app.test_client()
    for _ in range(int(sys.argv[1])):
        assert client.get("/nowhere").status_code == 404
    """
)


def test_multiprocess_mode_adds_up_every_worker(tmp_path, monkeypatch, sqlite_engine, fake_redis):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "AUTH": "off"}
    for count in (3, 4):
        subprocess.run(  # nosec B603 # this Python, a fixed script
            [sys.executable, "-c", WORKER, str(count)], cwd=ROOT, env=env, check=True
        )
    assert len(list(tmp_path.glob("*.db"))) >= 2  # a file per worker
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    app = create_app({"TESTING": True, "ENGINE": sqlite_engine, "REDIS": fake_redis, "AUTH": False})
    found = scrape(app.test_client())
    assert requests(found, UNMATCHED, status="404") == 7
    count = (
        "txstream_http_request_duration_seconds_count",
        (("method", "GET"), ("route", UNMATCHED)),
    )
    assert found[count] == 7


def test_gunicorns_child_exit_forgets_a_dead_workers_live_gauges(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    dead, alive = tmp_path / "gauge_livesum_4242.db", tmp_path / "gauge_livesum_4243.db"
    dead.touch()
    alive.touch()
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    hooks["child_exit"](None, SimpleNamespace(pid=4242))
    assert not dead.exists() and alive.exists()


class _Counts:
    received, stored, duplicates, dead = 10, 6, 1, 3


def test_subscriber_totals_are_read_when_scraped():
    redis_down, database_down = Outage("redis"), Outage("database")
    source = SimpleNamespace(lost=0)
    metrics = SubscriberMetrics(_Counts(), (redis_down, database_down), source)
    source.lost = 4
    redis_down.failed(ConnectionError("refused"))
    metrics.batch_size.observe(10)
    found = samples(generate_latest(metrics.registry).decode())
    assert found[("txstream_messages_received_total", ())] == 10
    assert found[("txstream_transactions_stored_total", ())] == 6
    assert found[("txstream_duplicates_total", ())] == 1
    assert found[("txstream_dead_letters_total", ())] == 3
    assert found[("txstream_stream_entries_lost_total", ())] == 4
    assert found[("txstream_outages_total", (("service", "redis"),))] == 1
    assert found[("txstream_outages_total", (("service", "database"),))] == 0
    assert found[("txstream_batch_size_count", ())] == 1
    assert found[("txstream_commit_seconds_count", ())] == 0


def backlog(collector: StreamBacklog) -> dict:
    return {family.name: family.samples[0].value for family in collector.collect()}


def test_stream_backlog_is_read_at_most_every_few_seconds(fake_redis):
    fake_redis.xgroup_create("s", "store", id="0", mkstream=True)
    for i in range(3):
        fake_redis.xadd("s", {"line": str(i)})
    fake_redis.xreadgroup("store", "c1", {"s": ">"}, count=1)
    now = [100.0]
    collector = StreamBacklog(fake_redis, ["s"], "store", refresh=5, clock=lambda: now[0])
    first = backlog(collector)
    assert first["txstream_stream_pending"] == 1
    assert first.get("txstream_stream_lag", 2) == 2  # fakeredis may not know the lag
    fake_redis.xreadgroup("store", "c1", {"s": ">"}, count=2)
    now[0] += 4.9
    assert backlog(collector) == first  # not read again yet
    now[0] += 0.2
    assert backlog(collector)["txstream_stream_pending"] == 3


def test_a_stream_backlog_that_cannot_be_read_is_left_out(closed_port, caplog):
    client = redis.Redis(port=closed_port, socket_connect_timeout=1)
    assert backlog(StreamBacklog(client, ["s"], "store")) == {}
    assert "metrics: cannot read group 'store' of stream 's'" in caplog.text


def test_a_missing_group_is_left_out(fake_redis):
    fake_redis.xadd("s", {"line": "1"})
    assert backlog(StreamBacklog(fake_redis, ["s"], "store")) == {}


@pytest.mark.services
def test_the_backlog_of_partitions_is_added_up(redis_client, key_prefix, caplog):
    streams = [f"{key_prefix}s:{{p{p}}}" for p in range(3)]
    for stream, (entries, read) in zip(streams, [(3, 1), (4, 2), (1, 0)], strict=True):
        redis_client.xgroup_create(stream, "store", id="0", mkstream=True)
        for i in range(entries):
            redis_client.xadd(stream, {"line": str(i)})
        if read:
            redis_client.xreadgroup("store", "c1", {stream: ">"}, count=read)
    found = backlog(StreamBacklog(redis_client, streams, "store"))
    assert found == {"txstream_stream_pending": 1 + 2, "txstream_stream_lag": 2 + 2 + 1}

    lost = f"{key_prefix}s:{{p3}}"
    redis_client.xadd(lost, {"line": "a stream without the group"})
    assert backlog(StreamBacklog(redis_client, [*streams, lost], "store")) == {}
    assert f"metrics: stream '{lost}' has no group 'store' yet" in caplog.text


def test_the_subscribers_metrics_port_flag_is_checked():
    script = Script("sub_and_store.py", "--metrics-port", "70000", env={})
    assert script.wait() == 2
    assert "--metrics-port: must be a port from 0 to 65535, got '70000'" in script.output
