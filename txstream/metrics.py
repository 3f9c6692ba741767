"""Prometheus metrics: the web app's `/metrics`, and the subscriber's own small HTTP server.

The web app counts requests and times them per route: its Flask URL rule
(`/api/users/<user_id>/sum`), never the raw path, so the number of series stays bounded.
Under gunicorn every worker is a process with its own counters: with
PROMETHEUS_MULTIPROC_DIR set (`make serve` sets it), each writes them to files there and
`/metrics` adds up every worker's (prometheus-client's multiprocess mode); without it (flask
run, the tests) a process serves its own registry.

The subscriber serves its counts, batch sizes, commit times, outages and, on the stream
transport, the entries it found lost and the consumer group's lag and pending entries (over
every partition's stream) on METRICS_BIND:METRICS_PORT.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import redis
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from txstream import redisconn
from txstream.runtime import Outage, short_error

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "(unmatched)"  # the route label of every path that no rule matches
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BACKLOG_REFRESH = 5.0  # seconds: XINFO GROUPS at most this often, whatever the scrapes
# Seconds: an API request takes about a millisecond (docs/BENCHMARKS.md); a commit of a
# full batch tens of milliseconds; an outage seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


@dataclass
class _Web:
    """One app's request metrics."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram


def init_app(app: Flask) -> None:
    """Count and time every request of `app`, and serve `/metrics`.

    Call it before any other `before_request`: one that answers (a 401) skips those after it.
    """
    registry = CollectorRegistry(auto_describe=True)
    app.extensions["txstream_metrics"] = _Web(
        registry,
        Counter(
            "txstream_http_requests_total",
            "HTTP requests answered, by route (Flask URL rule), method and status",
            ("route", "method", "status"),
            registry=registry,
        ),
        Histogram(
            "txstream_http_request_duration_seconds",
            "Seconds from a request's arrival in the app to its response, by route and method",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
    )
    app.before_request(_start_timer)
    app.after_request(_count)
    app.register_blueprint(bp)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    metrics: _Web = current_app.extensions["txstream_metrics"]
    rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"  # any token is a method
    metrics.requests.labels(rule, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.latency.labels(rule, method).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
def metrics() -> Response:
    """The metrics in Prometheus' text format (or OpenMetrics, when the scraper asks)."""
    path = os.environ.get(MULTIPROC_DIR)
    if path:  # every worker's files, added up
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
    else:
        registry = current_app.extensions["txstream_metrics"].registry
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encode(registry), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: forget a dead worker's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class SubscriberMetrics:
    """The subscriber's metrics, in a registry of its own.

    Its totals are read from `counts` (received, stored, duplicates, dead), the `outages`
    and the `source` (lost entries) when scraped, so the hot path pays nothing for them;
    the histograms are observed once per batch.
    """

    def __init__(
        self, counts: object, outages: tuple[Outage, ...], source: object | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "txstream_batch_size",
            "Messages per batch handed to the database",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "txstream_commit_seconds",
            "Seconds a batch's database transaction took (the attempt that committed)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Totals(counts, outages, source))
        ProcessCollector(registry=self.registry)

    def watch_backlog(self, client: redis.Redis, streams: list[str], group: str) -> None:
        """Also report the consumer group's lag and pending entries in `streams` (the stream
        transport's partitions: `Keys.streams`), added up."""
        self.registry.register(StreamBacklog(client, streams, group))

    def serve(self, bind: str, port: int) -> WSGIServer:
        """Serve the metrics on bind:port from a thread; OSError if the port is taken."""
        server, _thread = start_http_server(port, bind, self.registry)
        return server


# (metric name, help, attribute of the counts)
_COUNTS = (
    ("txstream_messages_received_total", "Messages read from Redis", "received"),
    (
        "txstream_transactions_stored_total",
        "Transactions this subscriber inserted into the database (committed)",
        "stored",
    ),
    (
        "txstream_duplicates_total",
        "Transactions not inserted because their txn_id was stored already",
        "duplicates",
    ),
    ("txstream_dead_letters_total", "Messages kept as dead letters in Redis", "dead"),
)


class _Totals(Collector):
    """The subscriber's running totals and outages, read when scraped."""

    def __init__(self, counts: object, outages: tuple[Outage, ...], source: object | None) -> None:
        self.counts = counts
        self.outages = outages
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, text, attribute in _COUNTS:
            yield CounterMetricFamily(name, text, value=getattr(self.counts, attribute))
        yield CounterMetricFamily(
            "txstream_stream_entries_lost_total",
            "Stream entries this subscriber found deleted (trimmed) before they were stored",
            value=getattr(self.source, "lost", 0),
        )
        outages = CounterMetricFamily(
            "txstream_outages_total",
            "Outages of a service the subscriber needs: times it stopped answering",
            labels=("service",),
        )
        for outage in self.outages:
            outages.add_metric((outage.what,), outage.count)
        yield outages


class StreamBacklog(Collector):
    """The consumer group's lag (entries not yet delivered) and pending entries (delivered,
    not acknowledged), added up over the streams (partitions), from XINFO GROUPS when
    scraped, at most every BACKLOG_REFRESH s.

    A failure, or a stream without the group, is logged and leaves the two gauges out of
    that scrape (a sum without a partition would look like progress); it never reaches the
    subscriber's loop, which does not call this.
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: list[str],
        group: str,
        refresh: float = BACKLOG_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.streams = streams
        self.group = group
        self.refresh = refresh
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self._last: dict | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # nothing to check at registration: no XINFO then

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self.clock() >= self._next:
                self._next = self.clock() + self.refresh
                self._last = self._read()
            info = self._last
        if info is None:
            return
        yield GaugeMetricFamily(
            "txstream_stream_pending",
            "Stream entries delivered to the group's consumers and not yet acknowledged",
            value=info["pending"],
        )
        if info.get("lag") is not None:  # Redis cannot always tell (after XDEL, XTRIM)
            yield GaugeMetricFamily(
                "txstream_stream_lag",
                "Stream entries not yet delivered to the group",
                value=info["lag"],
            )

    def _read(self) -> dict | None:
        """{"pending": n, "lag": n or None} of every stream, or None when one cannot tell."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for stream in self.streams:
                    pipe.xinfo_groups(stream)
                replies = pipe.execute()
        except redisconn.ERRORS as exc:
            log.warning(
                "metrics: cannot read group %r of %s: %s",
                self.group,
                _named(self.streams),
                short_error(exc),
            )
            return None
        found = [self._group_in(groups) for groups in replies]
        missing = [stream for stream, info in zip(self.streams, found, strict=True) if not info]
        if missing:
            log.warning("metrics: %s has no group %r yet", _named(missing), self.group)
            return None
        lags = [info.get("lag") for info in found]
        return {
            "pending": sum(info["pending"] for info in found),
            "lag": None if None in lags else sum(lags),
        }

    def _group_in(self, groups: list[dict]) -> dict | None:
        for info in groups:
            name = info["name"]
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                return info
        return None


def _named(streams: list[str]) -> str:
    """Streams for a log line: the first few by name."""
    shown = ", ".join(repr(s) for s in streams[:3])
    more = f" and {len(streams) - 3} more" if len(streams) > 3 else ""
    return f"stream {shown}{more}" if len(streams) == 1 else f"streams {shown}{more}"
