"""API latency and throughput on a bulk-seeded MariaDB and Redis, served by gunicorn, under wrk.

Seeds `--rows` transactions of `--users` users (uniformly) over the last `--days` days, with
their window and bucket totals and recent lists, unless that seed is there already and less
than a day old (`--reseed` forces it). Then starts the web app, runs wrk on each endpoint at
each concurrency, and prints a Markdown table for docs/BENCHMARKS.md.

`--serve`: gunicorn alone (the default), and/or `serve`, as `make serve` runs it
(txstream/serve.py: nginx in front of gunicorn). `--baseline REV`: the web app of REV too,
checked out into a temporary git worktree (bench/trees.py), gunicorn alone if REV has no
serve.py. All the web apps run at once, each on a port of its own, and take turns run by run
(`--runs`), so the machine's noise hits each alike; the table gives each one's requests/s as
a ratio to the first's (the baseline's). "CPU ms/request" is the web app's own processes'
(gunicorn's, and nginx's behind `serve`), not MariaDB's, Redis's nor wrk's: it is the figure
that other work on the machine changes least.

    .venv/bin/python bench/api.py [--rows 10000000] [--users 100000] [--duration 10]
    .venv/bin/python bench/api.py --concurrency 8 --serve gunicorn serve --baseline 6004828

Uses the database `txstream_bench_api` (or BENCH_API_DATABASE_URL) and Redis db 12 (or
BENCH_API_REDIS_URL), keys `benchapi:`. Needs wrk (`apt-get install wrk`), nginx for
`--serve serve` (`apt-get install nginx-light`), and a server with local_infile on (the
default).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import astuple
from datetime import timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import redis
from sqlalchemy import UniqueConstraint, create_engine, func, select, text
from sqlalchemy.schema import AddConstraint, CreateIndex, DropConstraint, DropIndex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apibench import (  # noqa: E402
    SERVERS,
    add_server_flags,
    app_env,
    bench_token,
    mark_seeded,
    print_setup,
    seed_found,
    serves,
    tree_cpu_s,
    web_server,
    wrk,
)
from trees import checkouts  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.rebuild_redis import RedisRebuild  # noqa: E402
from txstream.times import to_micros, utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402
from txstream.windows import window_totals  # noqa: E402

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_api"
DATABASE_URL = os.environ.get("BENCH_API_DATABASE_URL") or DEFAULT_URL
REDIS_URL = os.environ.get("BENCH_API_REDIS_URL") or "redis://127.0.0.1:6379/12"
KEYS = Keys("benchapi:")
ENDPOINTS = {
    "sum": "/api/users/{user}/sum?hours=24",
    "transactions": "/api/users/{user}/transactions",
    "recent": "/api/users/{user}/recent",
    "windows": "/api/users/{user}/windows",
}
P50_P99 = ("p50_us", "p99_us")  # the latencies of the table, from wrk
# What the table calls each of apibench.SERVERS.
SERVED = {"gunicorn": "gunicorn alone", "serve": "make serve (nginx + gunicorn)"}
BUCKET_GRAIN = 60  # seconds: a bucket is gcd(window, this) long, as the subscriber makes them
DAY_MICROS = 86_400_000_000
LOAD_ROWS = 1_000_000  # rows per generated file and LOAD DATA: two files on disk at most
FILL_ROWS = 50_000  # about this many rows per windows/recent-lists statement: sorts fit in memory
LOAD_SQL = text(
    "LOAD DATA LOCAL INFILE :path INTO TABLE transactions (txn_id, user_id, amount, @micros) "
    "SET ts = TIMESTAMP'1970-01-01 00:00:00' + INTERVAL @micros MICROSECOND,"
    " received_at = UTC_TIMESTAMP(6)"
)
# A window or bucket starts at a whole multiple of :w seconds since the epoch, as in
# txstream/windows.py: arithmetic on DATETIMEs, whatever the session's time zone.
WINDOWS_SQL = text("""
    INSERT INTO user_window_totals
        (user_id, window_start, tx_count, amount_sum, amount_min, amount_max, updated_at)
    SELECT user_id, TIMESTAMP'1970-01-01 00:00:00' + INTERVAL
               (TIMESTAMPDIFF(SECOND, TIMESTAMP'1970-01-01 00:00:00', ts) DIV :w * :w) SECOND
               AS start,
           COUNT(*), SUM(amount), MIN(amount), MAX(amount), UTC_TIMESTAMP(6)
    FROM transactions WHERE user_id BETWEEN :lo AND :hi GROUP BY user_id, start""")
BUCKETS_SQL = text("""
    INSERT INTO user_bucket_totals (user_id, bucket_start, tx_count, amount_sum)
    SELECT user_id, TIMESTAMP'1970-01-01 00:00:00' + INTERVAL
               (TIMESTAMPDIFF(SECOND, TIMESTAMP'1970-01-01 00:00:00', ts) DIV :w * :w) SECOND
               AS start,
           COUNT(*), SUM(amount)
    FROM transactions WHERE user_id BETWEEN :lo AND :hi GROUP BY user_id, start""")


def seed(engine, client: redis.Redis | None, args, lines: Iterator[str] | None = None) -> None:
    """Make the database and the recent lists anew; print how fast.

    `lines`: the rows to load, as `seed_lines` makes them (default: `seed_lines(args)`).
    `client` None: no recent lists (a benchmark of ingest, on a Redis of its own).
    """
    server = create_engine(engine.url.set(database=""))
    with server.begin() as conn:
        if not conn.execute(text("SELECT @@local_infile")).scalar():
            raise SystemExit("the server refuses LOAD DATA LOCAL: SET GLOBAL local_infile = 1")
        database = server.dialect.identifier_preparer.quote(engine.url.database)
        conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
    server.dispose()
    models.create_schema(engine)
    # Without them the load only appends (id grows with each row), and each is then built
    # once, sorted. Kept, (user_id, ts) would take every row at a random place, and so
    # would the unique txn_id where the ids are random (UUID4 `lines`).
    table = models.transactions
    secondary = sorted(table.indexes, key=lambda index: index.name)
    unique = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    ddl(engine, [*map(DropConstraint, unique), *map(DropIndex, secondary)])
    phases = {
        "load": lambda: load(engine, seed_lines(args) if lines is None else lines),
        "indexes": lambda: ddl(engine, [*map(AddConstraint, unique), *map(CreateIndex, secondary)]),
        "windows": lambda: fill_windows(engine, args),
        "buckets": lambda: fill_buckets(engine, args),
        "settings": lambda: write_settings(engine, args),
    }
    if client is not None:
        phases["recent lists"] = lambda: fill_recent(engine, client)
    spent = {}
    for name, phase in phases.items():
        started = time.monotonic()
        phase()
        spent[name] = time.monotonic() - started
    check(engine, args)
    mark_seeded(engine, describe(args))
    total = sum(spent.values())
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in spent.items())
    print(f"seeded {args.rows:,} rows in {total:.1f} s: {args.rows / total:,.0f} rows/s ({parts})")


def seed_lines(
    args, ago: int = 0, txn_ids: Callable[[int, int], str] | None = None
) -> Iterator[str]:
    """The seed's rows as lines of LOAD_SQL: `args.rows` of `args.users` users (uniform) over
    the `args.days` days before `ago` days ago; row i in the i-th slice of that time, so
    time and txn_id both grow with i.

    `txn_ids(i, micros)`: row i's txn_id, given its event time (default: `bench-<i>`).
    """
    rng = random.Random(1)  # nosec B311 # made-up rows, the same every run
    span = args.days * DAY_MICROS
    end = to_micros(utcnow()) - ago * DAY_MICROS
    width = len(str(args.rows))
    for i in range(args.rows):
        cents = rng.randrange(-2_500, 47_500) or 1  # about 5% refunds
        micros = end - span + i * span // args.rows + rng.randrange(span // args.rows or 1)
        user = rng.randrange(args.users) + 1
        txn_id = f"bench-{i:0{width}d}" if txn_ids is None else txn_ids(i, micros)
        yield f"{txn_id}\t{user}\t{Decimal(cents).scaleb(-2)}\t{micros}\n"


def load(engine, lines: Iterator[str]) -> None:
    """LOAD DATA the lines from files of LOAD_ROWS, each written while the one before loads."""

    def load_file(path: Path) -> None:
        with engine.begin() as conn:
            conn.execute(LOAD_SQL, {"path": str(path)})

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as loader:
        loading = None
        for n in itertools.count():
            path = Path(tmp) / f"{n % 2}.tsv"  # not the file that may be loading now
            with path.open("w") as f:
                f.writelines(islice(lines, LOAD_ROWS))
            if not path.stat().st_size:
                break
            if loading:
                loading.result()
            loading = loader.submit(load_file, path)
        if loading:
            loading.result()


def ddl(engine, statements) -> None:
    """Run each DDL statement."""
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def user_ranges(args) -> list[tuple[int, int]]:
    """(first, last) user ids of consecutive ranges of about FILL_ROWS rows each."""
    step = max(1, args.users * FILL_ROWS // args.rows)
    return [(lo, min(lo + step - 1, args.users)) for lo in range(1, args.users + 1, step)]


def fill_totals(engine, args, statement, seconds: int) -> None:
    """Sum the rows into windows or buckets of `seconds` by `statement`, a range of users
    at a time."""
    for lo, hi in user_ranges(args):
        with engine.begin() as conn:
            conn.execute(statement, {"w": seconds, "lo": lo, "hi": hi})


def fill_windows(engine, args) -> None:
    """Sum the rows into user_window_totals."""
    fill_totals(engine, args, WINDOWS_SQL, args.window_seconds)


def fill_buckets(engine, args) -> None:
    """Sum the rows into user_bucket_totals."""
    fill_totals(engine, args, BUCKETS_SQL, args.bucket_seconds)


def write_settings(engine, args) -> None:
    """Note in `settings` the lengths the windows and the buckets were made with."""
    lengths = {"window_seconds": args.window_seconds, "bucket_seconds": args.bucket_seconds}
    with engine.begin() as conn:
        conn.execute(
            models.settings.insert(),
            [{"name": name, "value": str(value)} for name, value in lengths.items()],
        )


def fill_recent(engine, client: redis.Redis) -> None:
    """Replace the recent lists by each user's newest rows, as txstream rebuilds them."""
    old = list(client.scan_iter(match=KEYS.prefix + "*"))
    for start in range(0, len(old), 1000):
        client.delete(*old[start : start + 1000])
    RedisRebuild(engine, client, KEYS, "bench").rebuild()


def check(engine, args) -> None:
    """Fail unless the windows and the buckets count each row once, and one user's equal
    those txstream's own code adds up from that user's rows."""
    t = models.transactions
    # Each table's columns as they begin window_totals' WindowTotal, in the same order.
    windows = ("window_start", "tx_count", "amount_sum", "amount_min", "amount_max")
    totals = [
        (models.user_window_totals, ("user_id", *windows), args.window_seconds),
        (
            models.user_bucket_totals,
            ("user_id", "bucket_start", "tx_count", "amount_sum"),
            args.bucket_seconds,
        ),
    ]
    with engine.connect() as conn:
        user = conn.execute(select(t.c.user_id).order_by(t.c.id).limit(1)).scalar()
        txns = conn.execute(
            select(t.c["txn_id", "user_id", "amount", "ts"]).where(t.c.user_id == user)
        ).all()
        for table, columns, seconds in totals:
            counted = conn.execute(select(func.sum(table.c.tx_count))).scalar()
            expected = [
                astuple(total)[: len(columns)]
                for total in window_totals((Transaction(*row) for row in txns), seconds)
            ]
            stored = conn.execute(
                select(table.c[columns])
                .where(table.c.user_id == user)
                .order_by(table.c[columns[1]])
            )
            if counted != args.rows or list(map(tuple, stored)) != expected:
                raise SystemExit(f"seed check failed: {counted} rows in {table}; or user {user}")


def describe(args) -> str:
    """The seed that `args` ask for, in words."""
    return (
        f"{args.rows:,} transactions of {args.users:,} users over {args.days} days, "
        f"windows of {args.window_seconds} s, buckets of {args.bucket_seconds} s"
    )


def seeded(engine, client: redis.Redis, args) -> bool:
    """Whether that seed is there, less than a day old. Refills the recent lists if lost."""
    if not seed_found(engine, describe(args), timedelta(days=1)):
        return False
    if not client.exists(KEYS.derived()):
        print("the recent lists are gone (Redis restarted?): filling them again")
        fill_recent(engine, client)
    return True


def add_seed_flags(parser: argparse.ArgumentParser, users: int) -> None:
    """The seed's flags (--rows, --users, --days); `seed_layout` completes what they give."""
    number = config.positive_int_flag
    parser.add_argument("--rows", type=number, default=10_000_000)
    parser.add_argument("--users", type=number, default=users)
    parser.add_argument("--days", type=number, default=30)


def seed_layout(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the aggregates' lengths: WINDOW_HOURS, as the app reads it."""
    args.window_seconds = config.load().window_seconds
    args.bucket_seconds = math.gcd(args.window_seconds, BUCKET_GRAIN)
    return args


class Setup(NamedTuple):
    """A web app to measure: the code of `tree` (labelled `label`), served by `server`."""

    label: str
    tree: Path
    server: str

    def name(self) -> str:
        """How the table names it."""
        served = SERVED[self.server]
        return f"{self.label}, {served}" if self.label else served


def setups(trees: dict[str, Path], servers: list[str]) -> list[Setup]:
    """Each tree served each way it can be (a tree from before serve.py: gunicorn only)."""
    return [
        Setup(label, tree, server)
        for label, tree in trees.items()
        for server in servers
        if serves(tree, server)
    ]


Rows = dict[tuple[str, int, Setup], list[dict]]  # wrk's results by (endpoint, concurrency, setup)


def measure(servers: dict[Setup, tuple[Script, str]], args, token: str) -> Rows:
    """wrk on every endpoint at every concurrency, `args.runs` runs of each web app, taking
    turns (in reverse order every other round), so that the machine's noise hits each alike.

    Adds "cpu_ms" to wrk's figures: the web app's own CPU (all its processes) a request.
    """
    results: Rows = {}
    for name in args.endpoints:
        path = ENDPOINTS[name]
        for _process, url in servers.values():
            wrk(url, path, args.users, 8, 1, token)  # warm-up, not reported
        for connections in args.concurrency:
            for i in range(args.runs):
                for setup in list(servers)[:: -1 if i % 2 else 1]:
                    process, url = servers[setup]
                    cpu = tree_cpu_s(process.proc.pid)
                    r = wrk(url, path, args.users, connections, args.duration, token)
                    r["cpu_ms"] = (tree_cpu_s(process.proc.pid) - cpu) * 1e3 / r["requests"]
                    results.setdefault((path, connections, setup), []).append(r)
                    print(
                        f"{name} x {connections}, {setup.name()}, run {i + 1}: "
                        f"{r['rps']:,.0f} requests/s",
                        file=sys.stderr,
                    )
    return results


def table(results: Rows) -> str:
    """The Markdown table: a row per endpoint, concurrency and web app, the medians of its
    runs; with several web apps, which one, and its requests/s as a ratio to the first's:
    the median of the ratios round by round, as the machine's load drifts between rounds."""
    several = len({setup for _, _, setup in results}) > 1
    head = ["endpoint", "concurrency", "requests/s", "p50 ms", "p99 ms", "CPU ms/request"]
    head.append("errors")
    align = ["---"] + ["--:"] * (len(head) - 1)
    if several:
        head[2:2], align[2:2] = ["served by"], ["---"]
        head += ["x first", "runs (requests/s)"]
        align += ["--:", "--:"]
    lines = [f"| {' | '.join(head)} |", f"|{'|'.join(align)}|"]
    first: dict[tuple[str, int], list[dict]] = {}
    for (path, connections, setup), runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p50, p99 = (statistics.median(r[key] for r in runs) / 1e3 for key in P50_P99)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        cells = [f"`{path}`", str(connections), f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}"]
        cells += [f"{cpu:.2f}", str(sum(r["errors"] for r in runs))]
        if several:
            base = first.setdefault((path, connections), runs)
            ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
            cells[2:2] = [setup.name()]
            cells += [f"x{ratio:.2f}", ", ".join(f"{r['rps']:,.0f}" for r in runs)]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number = config.positive_int_flag
    add_seed_flags(parser, users=100_000)
    parser.add_argument("--reseed", action="store_true", help="seed even if seeded already")
    parser.add_argument("--duration", type=number, default=10, help="seconds per run")
    parser.add_argument("--runs", type=number, default=1, help="runs per cell, in turns")
    parser.add_argument("--concurrency", type=number, nargs="+", default=[1, 8, 32])
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument(
        "--serve",
        nargs="+",
        choices=SERVERS,
        default=["gunicorn"],
        help="gunicorn alone, and/or as `make serve` does (txstream/serve.py: nginx in front)",
    )
    parser.add_argument(
        "--baseline", metavar="REV", help="also serve the web app of this git revision, in turns"
    )
    add_server_flags(parser)
    args = seed_layout(parser.parse_args())
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    # A plain `kill` cleans up as Ctrl-C does: servers stopped, worktree removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engine = create_engine(DATABASE_URL, connect_args={"local_infile": True})
    client = redis.Redis.from_url(REDIS_URL)
    if args.reseed or not seeded(engine, client, args):
        seed(engine, client, args)
    env = app_env(engine, REDIS_URL, KEYS.prefix, args)
    with checkouts(args.baseline) as trees, bench_token(engine) as token, ExitStack() as stack:
        # All at once, on ports of their own: an idle one costs the measured one nothing.
        servers = {
            setup: stack.enter_context(web_server(env, setup.tree, setup.server))
            for setup in setups(trees, args.serve)
        }
        results = measure(servers, args, token)
    print_setup(engine, args, describe(args))
    print(table(results))
    if any(r["errors"] for runs in results.values() for r in runs):
        raise SystemExit("some requests failed: errors are non-2xx responses and socket errors")


if __name__ == "__main__":
    main()
