"""How long rebuilding Redis's derived state from the database takes, and what the web app
answers meanwhile.

Seeds `--rows` transactions of `--users` users as bench/api.py does (LOAD DATA, then the
totals), unless that seed is there already and less than a day old. Then loses Redis's data
(FLUSHDB of its own database), times `flask --app app rebuild-redis` (start-up included),
checks `--check` random users' lists against the database and the stored count, and times
`/api/users/<id>/recent` with the marker missing (read from the database) and present
(from Redis).

    .venv/bin/python bench/rebuild_redis.py [--rows 10000000] [--users 1000000]

Uses the database `txstream_bench_redis` and Redis db 11 (FLUSHDB'd), keys `benchapi:`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import api  # noqa: E402
from apibench import seed_found  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from txstream import queries  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.recent import RECENT_SIZE, RecentLists  # noqa: E402

DATABASE_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_redis"
REDIS_URL = "redis://127.0.0.1:6379/11"
ENV = {
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": REDIS_URL,
    "KEY_PREFIX": api.KEYS.prefix,
    "AUTH": "off",
    "RATE_LIMIT": "100000000/minute",
    "LOG_LEVEL": "WARNING",
}


def rebuild() -> float:
    """Seconds that `flask --app app rebuild-redis` takes; fails unless it succeeds."""
    started = time.monotonic()
    Script("-m", "flask", "--app", "app", "rebuild-redis", env=ENV).wait_ok(7200)
    return time.monotonic() - started


def check(engine, client: redis.Redis, args) -> None:
    """`args.check` random users' lists hold their newest rows; `stored` counts every row."""
    lists = RecentLists(client, api.KEYS)
    rng = random.Random(2)  # nosec B311 # a sample, the same every run
    with engine.connect() as conn:
        for user in rng.sample(range(1, args.users + 1), args.check):
            newest, _ = queries.transactions_page(conn, RECENT_SIZE, user_id=user)
            if lists.latest(user) != newest:
                raise SystemExit(f"user {user}: the list is not the database's newest")
        rows = conn.execute(select(func.count()).select_from(models.transactions)).scalar()
    stored = int(client.hget(api.KEYS.counts(), "stored"))
    if stored != rows:
        raise SystemExit(f"stored counts {stored}, the database holds {rows}")


def recent_latency(args) -> tuple[float, float]:
    """Median and p99 ms of `args.requests` /recent requests of random users, in process."""
    os.environ.update(ENV)
    from app import create_app  # here: importing `app` builds an app, from ENV

    app = create_app({"TESTING": True})
    client = app.test_client()
    rng = random.Random(3)  # nosec B311 # made-up requests, the same every run
    spent = []
    for _ in range(args.requests):
        started = time.perf_counter()
        response = client.get(f"/api/users/{rng.randint(1, args.users)}/recent")
        spent.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"/recent answered {response.status_code}")
    app.config["ENGINE"].dispose()
    spent.sort()
    return statistics.median(spent) * 1e3, spent[math.ceil(len(spent) * 0.99) - 1] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number = config.positive_int_flag
    api.add_seed_flags(parser, users=1_000_000)
    parser.add_argument("--check", type=number, default=2000, help="users checked")
    parser.add_argument("--requests", type=number, default=2000, help="/recent requests timed")
    args = api.seed_layout(parser.parse_args())
    engine = create_engine(DATABASE_URL, connect_args={"local_infile": True})
    client = redis.Redis.from_url(REDIS_URL)
    if not seed_found(engine, api.describe(args), timedelta(days=1)):
        api.seed(engine, client, args)
    client.flushdb()  # Redis loses everything
    missing = recent_latency(args)
    seconds = rebuild()
    check(engine, client, args)
    present = recent_latency(args)
    memory = client.info("memory")["used_memory"]
    print(
        f"rebuild-redis: {args.users:,} users, {args.rows:,} rows in {seconds:.1f} s "
        f"({args.users / seconds:,.0f} users/s); Redis then holds {memory / 2**20:,.0f} MiB"
    )
    for what, (p50, p99) in (("from the database", missing), ("from Redis", present)):
        print(f"/recent {what}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({args.requests} requests)")


if __name__ == "__main__":
    main()
