"""How fast one subscriber drains a stream that is already full: the subscriber alone.

Fills the stream with `--count` transactions (emitter burst, no subscriber running), then
times `sub_and_store.py --max-messages COUNT` from start to exit (start-up included).

    .venv/bin/python bench/drain.py [--count 50000] [--users 10000] [--runs 3]

Uses the database `txstream_bench_drain` (dropped first) and Redis db 13 (flushed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from txstream.processes import Script  # noqa: E402

ENV = {
    "REDIS_URL": "redis://127.0.0.1:6379/13",
    "DATABASE_URL": "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_drain",
    "TRANSPORT": "stream",
    "STREAM": "drain",
    "KEY_PREFIX": "drain:",
    "LOG_LEVEL": "WARNING",
}


def drain_once(count: int, users: int) -> float:
    """One run: the subscriber's tx/s over a full stream."""
    server = models.make_engine("mysql+pymysql://root@127.0.0.1:3306/")
    with server.begin() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS txstream_bench_drain"))
    server.dispose()
    redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
    fill = Script(
        "emitter_and_pub.py",
        "--rate",
        "0",
        "--quiet",
        "--count",
        str(count),
        "--users",
        str(users),
        env=ENV,
    )
    fill.wait_ok(600)
    started = time.monotonic()
    subscriber = Script("sub_and_store.py", "--max-messages", str(count), env=ENV)
    subscriber.wait_ok(900)
    return count / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = [drain_once(args.count, args.users) for _ in range(args.runs)]
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"drain: {statistics.median(rates):,.0f} tx/s median ({runs})")


if __name__ == "__main__":
    main()
