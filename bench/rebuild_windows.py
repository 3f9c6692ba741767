"""How long `flask --app app rebuild-windows` takes: 6 h windows to 1 h, and back.

Seeds `--rows` transactions of `--users` users over the last `--days` days as a subscriber
with 6 h windows stores them (Store.commit, 2,000 rows a batch), then times the command
(start-up included) from 6 h to 1 h and back, and checks a user's totals after each.

    .venv/bin/python bench/rebuild_windows.py [--rows 1000000] [--users 10000] [--days 7]

Uses the database `txstream_bench_rebuild` (dropped first) and Redis db 13, keys
`benchrebuild:` (no subscriber heartbeats there, so the command runs).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from txstream.aggregates import Layout, recorded_layout  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.store import Store  # noqa: E402
from txstream.times import utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402

SERVER_URL = "mysql+pymysql://root@127.0.0.1:3306/"
DATABASE = "txstream_bench_rebuild"
ENV = {
    "DATABASE_URL": SERVER_URL + DATABASE,
    "REDIS_URL": "redis://127.0.0.1:6379/13",
    "KEY_PREFIX": "benchrebuild:",
    "AUTH": "off",
    "LOG_LEVEL": "WARNING",
}
BATCH = 2000


def seed(args) -> None:
    """The database anew, with `args.rows` rows stored as a 6 h subscriber stores them."""
    server = models.make_engine(SERVER_URL)
    with server.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
    server.dispose()
    engine = models.make_engine(ENV["DATABASE_URL"])
    models.create_schema(engine)
    client = redis.Redis.from_url(ENV["REDIS_URL"])
    store = Store(engine, client, Keys(ENV["KEY_PREFIX"]), 6 * 3600)
    rng = random.Random(1)  # nosec B311 # made-up rows, the same every run
    end, span = utcnow(), timedelta(days=args.days)
    started = time.monotonic()
    for first in range(0, args.rows, BATCH):
        txns = [
            Transaction(
                f"rb{i}",
                rng.randint(1, args.users),
                Decimal(rng.randint(1, 500_000)).scaleb(-2),
                end - span * (1 - i / args.rows),  # in time order, as they arrive
            )
            for i in range(first, min(first + BATCH, args.rows))
        ]
        store.commit(txns)
    seconds = time.monotonic() - started
    print(f"seeded {args.rows:,} rows in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s)")
    engine.dispose()
    client.close()


def rebuild_to(hours: str) -> tuple[float, str]:
    """Seconds that `flask --app app rebuild-windows --hours HOURS` takes, and the swap's
    own as the command reports it."""
    started = time.monotonic()
    command = Script("-m", "flask", "--app", "app", "rebuild-windows", "--hours", hours, env=ENV)
    command.wait_ok(3600)
    seconds = time.monotonic() - started
    return seconds, command.output.rpartition("swapped in at once (")[2].partition(")")[0]


def check(hours: str) -> None:
    """The layout is recorded, and user 1's windows add up to its raw rows."""
    engine = models.make_engine(ENV["DATABASE_URL"])
    t, w = models.transactions, models.user_window_totals
    with engine.connect() as conn:
        layout = recorded_layout(conn)
        raw = conn.execute(select(func.count(), func.sum(t.c.amount)).where(t.c.user_id == 1))
        windows = conn.execute(
            select(func.sum(w.c.tx_count), func.sum(w.c.amount_sum)).where(w.c.user_id == 1)
        )
        raw_totals, window_totals = tuple(raw.one()), tuple(windows.one())
    engine.dispose()
    if layout != Layout.for_window(int(Decimal(hours) * 3600)):
        raise SystemExit(f"the layout recorded after the rebuild is {layout}")
    if raw_totals != window_totals:
        raise SystemExit(f"user 1: raw rows {raw_totals}, windows {window_totals}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    seed(args)
    for hours in ("1", "6"):
        seconds, swap = rebuild_to(hours)
        check(hours)
        print(
            f"rebuild-windows --hours {hours}: {args.rows:,} rows in {seconds:.1f} s "
            f"({args.rows / seconds:,.0f} rows/s; the swap {swap})"
        )


if __name__ == "__main__":
    main()
