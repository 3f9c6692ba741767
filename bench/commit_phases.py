"""Where a batch's database transaction spends its time, statement by statement.

Stores 50,000 fake transactions (10,000 users) through `Store.commit` in batches and adds
up, per kind of statement, the time inside the driver (escaping, sending, the server),
and what is left: SQLAlchemy and Python around it. For the hot-spot work of issue #4.

    .venv/bin/python bench/commit_phases.py [--count 50000] [--batch 2000]

Uses the database `txstream_bench_phases` (dropped first) and Redis db 14.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import event, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import models  # noqa: E402
from emitter_and_pub import FakeTransactions  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.store import Store  # noqa: E402

SERVER_URL = "mysql+pymysql://root@127.0.0.1:3306/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=config.Settings.batch_size)
    args = parser.parse_args()
    server = models.make_engine(SERVER_URL)
    with server.begin() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS txstream_bench_phases"))
    engine = models.make_engine(SERVER_URL + "txstream_bench_phases")
    models.create_schema(engine)
    spent: collections.Counter[str] = collections.Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _started(conn, _cursor, _statement, _params, _context, _many):
        conn.info["started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _done(conn, _cursor, statement, _params, _context, _many):
        kind = "INSERT ... ON DUPLICATE KEY UPDATE" if "DUPLICATE" in statement else None
        spent[kind or statement.split()[0]] += time.perf_counter() - conn.info["started"]

    client = redis.Redis(db=14)
    store = Store(engine, client, Keys("bench-phases:"), 6 * 3600)
    # bandit B311: made-up transactions, the same every run
    source = FakeTransactions(10_000, random.Random(1))  # nosec B311
    txns = [source.next() for _ in range(args.count)]
    started = time.perf_counter()
    for i in range(0, args.count, args.batch):
        store.commit(txns[i : i + args.batch])
    total = time.perf_counter() - started
    print(f"Store.commit: {args.count / total:,.0f} tx/s ({total:.2f} s, batches of {args.batch})")
    for kind, seconds in spent.most_common():
        print(f"  {kind}: {seconds:.2f} s in the driver")
    print(f"  SQLAlchemy and Python around them: {total - sum(spent.values()):.2f} s")
    engine.dispose()
    server.dispose()


if __name__ == "__main__":
    main()
