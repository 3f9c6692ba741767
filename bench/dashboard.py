"""The dashboard's cost: /api/users/{id}/sum latency under wrk, without and with open tabs
of the console polling GET /api/live, on the web app as `make serve` runs it.

Reads the seed of bench/api.py (run it first: `.venv/bin/python bench/api.py --endpoints
sum`), and gives the app a key prefix of its own, `benchdash:`, holding the dashboard's
counters: the rankings of the current window's users (filled once from the database) and
15 minutes of ingest-rate counters. Each simulated tab polls like static/dashboard.js: a
request, `--pause` ms, the next, with `after` set to the position of the previous answer.

    .venv/bin/python bench/dashboard.py [--tabs 20] [--duration 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import redis
from sqlalchemy import create_engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api import DATABASE_URL, ENDPOINTS, REDIS_URL  # noqa: E402
from apibench import add_server_flags, serving, wrk  # noqa: E402

import config  # noqa: E402
from models import user_window_totals  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.store import RATE_BUCKET, RATE_KEEP, rate_bucket  # noqa: E402
from txstream.times import to_micros, utcnow  # noqa: E402
from txstream.windows import window_start  # noqa: E402

KEYS = Keys("benchdash:")


def fill_counters(engine, client: redis.Redis, window_seconds: int) -> int:
    """15 minutes of rate counters, as subscribers keep them; the number of users active
    in the current window (whose top users the console reads from the database)."""
    start = window_start(utcnow(), window_seconds)
    w = user_window_totals
    query = select(func.count()).select_from(w).where(w.c.window_start == start)
    with engine.connect() as conn:
        users = conn.execute(query).scalar()
    client.delete(KEYS.live_top(to_micros(start) // 10**6))
    now = rate_bucket(time.time())
    for k in range(RATE_KEEP // RATE_BUCKET):
        client.set(KEYS.rate(now - k * RATE_BUCKET), 1000 + k, ex=RATE_KEEP)
    return users


class Tab(threading.Thread):
    """One open console: polls /api/live, pausing `pause` seconds between answers."""

    def __init__(self, url: str, token: str, pause: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.pause, self.stop = url, token, pause, stop
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        position = None
        while not self.stop.is_set():
            path = "/api/live" + (f"?after={quote(position)}" if position else "")
            request = urllib.request.Request(  # bandit B310: an http:// URL made here
                self.url + path, headers={"Authorization": f"Bearer {self.token}"}
            )
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # nosec B310
                    position = json.load(response)["position"] or position
                self.latencies.append(time.perf_counter() - began)
            except OSError:
                self.errors += 1
            self.stop.wait(self.pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number = config.positive_int_flag
    parser.add_argument("--tabs", type=number, default=20)
    parser.add_argument("--pause", type=number, default=800, help="ms between a tab's polls")
    parser.add_argument("--duration", type=number, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=number, default=4, help="wrk's, on /sum")
    parser.add_argument("--users", type=number, default=100_000, help="of the seed")
    add_server_flags(parser)
    args = parser.parse_args()
    engine = create_engine(DATABASE_URL)
    client = redis.Redis.from_url(REDIS_URL)
    ranked = fill_counters(engine, client, config.load().window_seconds)
    print(f"{ranked:,} users in the current window", file=sys.stderr)
    path = ENDPOINTS["sum"]
    with serving(engine, REDIS_URL, KEYS.prefix, args) as (url, token):
        wrk(url, path, args.users, args.connections, 2, token)  # warm-up, not reported
        alone = wrk(url, path, args.users, args.connections, args.duration, token)
        stop = threading.Event()
        tabs = [Tab(url, token, args.pause / 1000, stop) for _ in range(args.tabs)]
        for tab in tabs:
            tab.start()
        time.sleep(2)  # the tabs' first polls, and the cache of the top users, settle
        with_tabs = wrk(url, path, args.users, args.connections, args.duration, token)
        stop.set()
        for tab in tabs:
            tab.join()
    polls = sorted(t for tab in tabs for t in tab.latencies)
    errors = sum(tab.errors for tab in tabs)
    print(
        f"{args.workers} workers x {args.threads} threads; wrk -c{args.connections} "
        f"{args.duration} s on `{path}`; {args.tabs} tabs polling every {args.pause} ms"
    )
    print("| /sum | requests/s | p50 ms | p99 ms | errors |")
    print("|---|--:|--:|--:|--:|")
    for name, r in (("alone", alone), (f"with {args.tabs} tabs", with_tabs)):
        print(
            f"| {name} | {r['rps']:,.0f} | {r['p50_us'] / 1e3:.2f} | "
            f"{r['p99_us'] / 1e3:.2f} | {r['errors']} |"
        )
    if polls:
        p99 = polls[min(len(polls) - 1, int(len(polls) * 0.99))]
        print(
            f"\nthe tabs: {len(polls):,} polls, {len(polls) / (args.duration + 2):.1f}/s, "
            f"p50 {statistics.median(polls) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
            f"{errors} errors"
        )
    if alone["errors"] or with_tabs["errors"] or errors:
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
