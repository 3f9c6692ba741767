"""What reading from a replica costs a request: the router's part, timed in-process.

Starts a private MariaDB primary and a GTID replica of it (txstream.testing) on loopback
ports, and times, in this process:
- `ReadRouter.lag()` when its verdict is fresh: what nearly every request pays;
- a read through `txstream.replica.read` against the same read straight on the replica's
  engine (`queries.read`), each in a request of its own, the work itself empty: the
  router's whole part (choosing, the request's note of it), beside a pool checkout;
- one check of the replica (`SHOW ALL SLAVES STATUS` and the verdict): what the request
  that finds the verdict stale pays on top, once a second per worker at most.
Prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/replica_reads.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Importing `app` builds an app of the environment's settings: one that needs nothing.
os.environ.update(AUTH="off", DATABASE_URL="sqlite://", LOG_LEVEL="ERROR")

import models  # noqa: E402
from app import create_app  # noqa: E402
from txstream import queries  # noqa: E402
from txstream.replica import read, router  # noqa: E402
from txstream.testing import PrivateMariaDB, replicated  # noqa: E402

REPEAT = 5  # timeit's repeats: the best is kept
READS = 20_000  # reads per timing of a read


def best_us(*works, number: int) -> list[float]:
    """For each of `works`, the best of REPEAT timings of `number` calls, in microseconds per
    call; the works take turns, so that the machine's load falls on each alike."""
    timings = [[timeit.timeit(work, number=number) for work in works] for _ in range(REPEAT)]
    return [min(column) / number * 1e6 for column in zip(*timings, strict=True)]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="txstream-bench-replica-") as tmp:
        base = Path(tmp)
        PrivateMariaDB.install(base / "template")
        with replicated(base, base / "template") as (primary, replica):
            rows = measure(primary, replica)
    print("| what | time |")
    print("|---|--:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def measure(primary: PrivateMariaDB, replica: PrivateMariaDB) -> list[tuple[str, str]]:
    """The rows of the table."""
    primary_engine = models.make_engine(primary.url, reads_only=True)
    app = create_app(
        {
            "ENGINE": primary_engine,
            "REDIS": redis.Redis(),  # never used: nothing here reaches Redis
            "DATABASE_READ_URL": replica.url,
        },
        check_window=False,
    )
    with app.app_context():
        chosen = router()
    try:
        if chosen.lag() != 0:  # a fresh verdict that the replica is read, caught up
            raise SystemExit(f"the replica is not read: {chosen.verdict}")

        def routed() -> None:
            with app.test_request_context():
                read(lambda conn: None)

        def straight() -> None:
            with app.test_request_context():
                queries.read(chosen.replica, lambda conn: None)

        (lag_us,) = best_us(chosen.lag, number=100_000)
        routed_us, straight_us = best_us(routed, straight, number=READS)
        checks = []
        for _ in range(200):
            started = time.perf_counter()
            chosen._set(chosen._check())  # what the request that finds it stale pays
            checks.append(time.perf_counter() - started)
    finally:
        chosen.replica.dispose()
        primary_engine.dispose()
    return [
        ("`ReadRouter.lag()`, verdict fresh (best of 5 x 100,000)", f"{lag_us:.2f} µs"),
        ("a request's empty read, straight on the replica's engine", f"{straight_us:.1f} µs"),
        ("the same through `txstream.replica.read`", f"{routed_us:.1f} µs"),
        ("the router's part: the difference", f"{routed_us - straight_us:.1f} µs"),
        ("one check of the replica: median of 200", f"{statistics.median(checks) * 1e3:.3f} ms"),
        ("one check: p99 of 200", f"{statistics.quantiles(checks, n=100)[98] * 1e3:.3f} ms"),
    ]


if __name__ == "__main__":
    main()
