"""End-to-end ingest throughput: emitter burst -> Redis -> consumer(s) -> MariaDB.

For each mode, the time from the emitter's start to the last row committed, on the real
Redis and MariaDB: (a) the seed's naive design, one INSERT+COMMIT per message
(bench/naive_subscriber.py); (b) txstream over pub/sub; (c) txstream over the stream with
1 and 2 subscribers, each run checked for exactly once (rows and window totals); and (d)
the raw ceiling: the same rows INSERTed straight into MariaDB in batches, nothing else.

    .venv/bin/python bench/ingest.py                       # 50,000 tx, 500 users, 3 runs
    .venv/bin/python bench/ingest.py --count 200000 --users 10000 --runs 3

Uses the database `txstream_bench` and Redis db 14 (emptied first); override with
BENCH_DATABASE_URL / BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from emitter_and_pub import FakeTransactions  # noqa: E402
from tests.processes import Script, wait_until  # noqa: E402
from txstream.wire import utcnow  # noqa: E402

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SEED = 1
BATCH = 500  # rows per transaction of the raw ceiling, as the subscriber's default batch


def stored(engine) -> tuple[int, int]:
    """(rows in transactions, transactions counted in user_window_totals)."""
    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(models.transactions))
        counted = conn.scalar(
            select(func.coalesce(func.sum(models.user_window_totals.c.tx_count), 0))
        )
        return rows, int(counted)


def empty_tables(engine) -> None:
    """Every run starts from empty tables: TRUNCATE, so no purge of deleted rows runs on."""
    with engine.begin() as conn:
        for table in (models.transactions, models.user_window_totals):
            conn.execute(text(f"TRUNCATE TABLE {table.name}"))


def end_to_end(engine, client, count: int, users: int, consumers: list[list[str]], env: dict):
    """Emit `count` transactions in a burst; the tx/s until the consumers stored them all."""
    empty_tables(engine)
    client.flushdb()
    env = {
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": DATABASE_URL,
        "CHANNEL": "bench",
        "STREAM": "bench",
        "KEY_PREFIX": "bench:",
        "LOG_LEVEL": "INFO",
        **env,
    }
    procs = [Script(*args, env=env) for args in consumers]
    try:
        for proc in procs:
            proc.wait_for_line(r"reading", timeout=60)
        started = time.monotonic()
        emitter = Script(
            "emitter_and_pub.py",
            *("--rate", "0", "--quiet", "--count", str(count)),
            *("--users", str(users), "--seed", str(SEED)),
            env={**env, "LOG_LEVEL": "WARNING"},
        )
        assert emitter.wait(600) == 0, emitter.output
        wait_until(lambda: stored(engine)[0] >= count, 900, f"{count} rows")
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.stop()
    return count / elapsed


def txstream(transport: str, subscribers: int):
    """A measured run of txstream's own subscriber(s); checks exactly once."""

    def run(engine, client, count: int, users: int) -> float:
        rate = end_to_end(
            engine,
            client,
            count,
            users,
            [["sub_and_store.py"]] * subscribers,
            {"TRANSPORT": transport},
        )
        rows, counted = stored(engine)
        if rows != count or counted != count:
            raise SystemExit(f"LOSS OR DUPLICATES: {rows} rows, {counted} counted, {count} sent")
        return rate

    return run


def naive(engine, client, count: int, users: int) -> float:
    """The seed's design: one INSERT and one COMMIT per message (bench/naive_subscriber.py)."""
    args = ["bench/naive_subscriber.py", "--redis-url", REDIS_URL, "--database-url", DATABASE_URL]
    args += ["--stream", "bench", "--count", str(count)]
    rate = end_to_end(engine, client, count, users, [args], {"TRANSPORT": "stream"})
    if stored(engine)[0] != count:
        raise SystemExit(f"naive baseline stored {stored(engine)[0]} of {count}")
    return rate


def raw_ceiling(engine, client, count: int, users: int) -> float:
    """The same rows, INSERTed straight into MariaDB in batches of 500: no Redis, no work."""
    source = FakeTransactions(users, random.Random(SEED))
    now = utcnow()
    rows = [
        (t.txn_id, t.user_id, t.amount, t.ts, now) for t in (source.next() for _ in range(count))
    ]
    empty_tables(engine)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.monotonic()
        for i in range(0, count, BATCH):
            cursor.executemany(
                "INSERT INTO transactions (txn_id, user_id, amount, ts, received_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows[i : i + BATCH],
            )
            raw.commit()
        elapsed = time.monotonic() - started
    finally:
        raw.close()
    return count / elapsed


MODES = {
    "(a) naive: INSERT+COMMIT per message": naive,
    "(b) txstream pub/sub": txstream("pubsub", 1),
    "(c) txstream stream, 1 subscriber": txstream("stream", 1),
    "(c) txstream stream, 2 subscribers": txstream("stream", 2),
    "(d) raw ceiling: batched INSERT, no Redis": raw_ceiling,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--modes", default="abcd", help="which modes to run, by letter (default: %(default)s)"
    )
    args = parser.parse_args()
    engine = models.make_engine(DATABASE_URL)
    models.create_schema(engine)
    client = redis.Redis.from_url(REDIS_URL)
    print(f"# {args.count} transactions, {args.users} users, median of {args.runs} runs")
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    results = {}
    for name, run in MODES.items():
        if name[1] not in args.modes:
            continue
        results[name] = [run(engine, client, args.count, args.users) for _ in range(args.runs)]
    naive_rate = statistics.median(results["(a) naive: INSERT+COMMIT per message"])
    ceiling = statistics.median(results["(d) raw ceiling: batched INSERT, no Redis"])
    print("| mode | tx/s (median) | x naive | % of ceiling | runs |")
    print("|---|---:|---:|---:|---|")
    for name, rates in results.items():
        median = statistics.median(rates)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"| {name} | {median:,.0f} | {median / naive_rate:.1f} | "
            f"{100 * median / ceiling:.0f}% | {runs} |"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
