"""How fast one subscriber drains a stream that is already full: the subscriber alone.

Fills the stream with `--count` transactions (emitter burst, no subscriber running), then
times `sub_and_store.py --max-messages COUNT` from start to exit (start-up included), and
counts its CPU seconds and the Redis server's. With `--baseline REV`, REV's scripts run
too, checked out into a temporary git worktree, taking turns with this tree's run by run.

    .venv/bin/python bench/drain.py [--count 50000] [--users 10000] [--runs 3]
    .venv/bin/python bench/drain.py --count 200000 --runs 5 --baseline f208890

Uses the database `txstream_bench_drain` (dropped first) and Redis db 13 (flushed); override
with DRAIN_DATABASE_URL / DRAIN_REDIS_URL.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import redis_cpu_s  # noqa: E402
from trees import checkouts  # noqa: E402

import models  # noqa: E402
from txstream.processes import Script  # noqa: E402

DATABASE_URL = os.environ.get(
    "DRAIN_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_drain"
)
ENV = {
    "REDIS_URL": os.environ.get("DRAIN_REDIS_URL", "redis://127.0.0.1:6379/13"),
    "DATABASE_URL": DATABASE_URL,
    "TRANSPORT": "stream",
    "STREAM": "drain",
    "KEY_PREFIX": "drain:",
    "LOG_LEVEL": "WARNING",
    "METRICS_PORT": "0",
}


def drain_once(count: int, users: int, tree: Path) -> tuple[float, float, float]:
    """One run of `tree`'s scripts: the subscriber's tx/s over a full stream, its CPU
    seconds and the Redis server's."""
    url = make_url(DATABASE_URL)
    server = models.make_engine(url.set(database="").render_as_string(hide_password=False))
    with server.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
    server.dispose()
    client = redis.Redis.from_url(ENV["REDIS_URL"])
    client.flushdb()
    env = {**ENV, "PYTHONPATH": str(tree)}
    fill = Script(
        "emitter_and_pub.py",
        *("--rate", "0", "--quiet", "--count", str(count), "--users", str(users)),
        env=env,
        cwd=tree,
    )
    fill.wait_ok(600)
    children, redis_before = resource.getrusage(resource.RUSAGE_CHILDREN), redis_cpu_s(client)
    started = time.monotonic()
    subscriber = Script("sub_and_store.py", "--max-messages", str(count), env=env, cwd=tree)
    subscriber.wait_ok(900)
    rate = count / (time.monotonic() - started)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime
    redis_used = redis_cpu_s(client) - redis_before
    client.close()
    return rate, cpu, redis_used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also run REV's scripts, in turns")
    args = parser.parse_args()
    with checkouts(args.baseline) as trees:
        runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in trees}
        for _ in range(args.runs):
            for label, tree in trees.items():
                runs[label].append(drain_once(args.count, args.users, tree))
    for label, results in runs.items():
        rates = ", ".join(f"{rate:,.0f}" for rate, _, _ in results)
        print(
            f"drain{f' {label}' if label else ''}: "
            f"{statistics.median(r for r, _, _ in results):,.0f} tx/s median ({rates}); "
            f"subscriber CPU {statistics.median(c for _, c, _ in results):.2f} s, "
            f"Redis CPU {statistics.median(c for _, _, c in results):.2f} s (medians)"
        )


if __name__ == "__main__":
    main()
