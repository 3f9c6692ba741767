"""End-to-end ingest throughput: emitter burst -> Redis -> subscriber(s) -> MariaDB.

Measures, for each mode, the time from the emitter's start to the last row committed,
on the real Redis and MariaDB, and checks at the end that every transaction is stored
exactly once and that the window totals equal the raw rows.

    .venv/bin/python bench/ingest.py                       # 50,000 tx, 500 users, 3 runs
    .venv/bin/python bench/ingest.py --count 200000 --runs 5

Uses the database `txstream_bench` and Redis db 14 (emptied first); override with
BENCH_DATABASE_URL / BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import delete, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from tests.processes import Script, wait_until  # noqa: E402

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
MODES = {  # name: (transport, subscribers)
    "pubsub, 1 subscriber": ("pubsub", 1),
    "stream, 1 subscriber": ("stream", 1),
    "stream, 2 subscribers": ("stream", 2),
}


def stored(engine) -> tuple[int, int]:
    """(rows in transactions, transactions counted in user_window_totals)."""
    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(models.transactions))
        counted = conn.scalar(
            select(func.coalesce(func.sum(models.user_window_totals.c.tx_count), 0))
        )
        return rows, int(counted)


def run_once(engine, client, transport: str, subscribers: int, count: int, users: int) -> float:
    """One measured run; the throughput in transactions per second."""
    with engine.begin() as conn:
        conn.execute(delete(models.transactions))
        conn.execute(delete(models.user_window_totals))
    client.flushdb()
    env = {
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": DATABASE_URL,
        "TRANSPORT": transport,
        "CHANNEL": "bench",
        "STREAM": "bench",
        "KEY_PREFIX": "bench:",
        "LOG_LEVEL": "WARNING",
    }
    subs = [
        Script("sub_and_store.py", env={**env, "LOG_LEVEL": "INFO"}) for _ in range(subscribers)
    ]
    try:
        for sub in subs:
            sub.wait_for_line(r"reading .*; waiting for transactions", timeout=60)
        started = time.monotonic()
        emitter = Script(
            "emitter_and_pub.py",
            *("--rate", "0", "--quiet", "--count", str(count), "--users", str(users)),
            env=env,
        )
        assert emitter.wait(600) == 0, emitter.output
        wait_until(lambda: stored(engine)[0] >= count, 600, f"{count} rows")
        elapsed = time.monotonic() - started
        rows, counted = stored(engine)
        if rows != count or counted != count:
            raise SystemExit(f"LOSS OR DUPLICATES: {rows} rows, {counted} counted, {count} sent")
    finally:
        for sub in subs:
            sub.stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    engine = models.make_engine(DATABASE_URL)
    models.create_schema(engine)
    client = redis.Redis.from_url(REDIS_URL)
    print(f"# {args.count} transactions, {args.users} users, median of {args.runs} runs")
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| mode | tx/s (median) | runs |")
    print("|---|---:|---|")
    for name, (transport, subscribers) in MODES.items():
        rates = [
            run_once(engine, client, transport, subscribers, args.count, args.users)
            for _ in range(args.runs)
        ]
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {name} | {statistics.median(rates):,.0f} | {runs} |", flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
