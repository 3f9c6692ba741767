"""API latency and throughput on a bulk-seeded MariaDB and Redis, served by gunicorn, under wrk.

Seeds `--rows` transactions of `--users` users (uniformly) over the last `--days` days, with
their window totals and recent lists, unless that seed is there already and less than a day
old (`--reseed` forces it). Then starts the web app as `make serve` does, runs wrk on each
endpoint at each concurrency, and prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/api.py [--rows 10000000] [--users 100000] [--duration 10]

Uses the database `txstream_bench_api` (or BENCH_API_DATABASE_URL) and Redis db 12, keys
`benchapi:`. Needs wrk (`apt-get install wrk`) and a server with local_infile on (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import runpy
import secrets
import shlex
import shutil
import subprocess  # nosec B404 # runs gunicorn and wrk, by fixed argument lists
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import redis
from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, DropIndex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import models  # noqa: E402
from txstream import tokens  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import ROOT, Script, free_port, wait_until  # noqa: E402
from txstream.recent import RECENT_SIZE  # noqa: E402
from txstream.store import Committed, Store  # noqa: E402
from txstream.times import to_micros, utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402
from txstream.windows import window_totals  # noqa: E402

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_api"
DATABASE_URL = os.environ.get("BENCH_API_DATABASE_URL") or DEFAULT_URL
REDIS_URL = "redis://127.0.0.1:6379/12"
KEYS = Keys("benchapi:")
ENDPOINTS = {
    "sum": "/api/users/{user}/sum?hours=24",
    "transactions": "/api/users/{user}/transactions",
    "recent": "/api/users/{user}/recent",
    "windows": "/api/users/{user}/windows",
}
ROW = "| `{}` | {} | {:,.0f} | {:.2f} | {:.2f} | {} |"  # of the Markdown table
SERVE = ("-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app")  # as `make serve`
LOAD_ROWS = 1_000_000  # rows per generated file and LOAD DATA: two files on disk at most
FILL_ROWS = 50_000  # about this many rows per windows/recent-lists statement: sorts fit in memory
# Which seed the database holds; written last, so a seed that stopped half-way has none.
SEEDS = Table("bench_api_seed", MetaData(), Column("seed", String(200)), Column("at", DateTime))
LOAD_SQL = text(
    "LOAD DATA LOCAL INFILE :path INTO TABLE transactions (txn_id, user_id, amount, @micros) "
    "SET ts = TIMESTAMP'1970-01-01 00:00:00' + INTERVAL @micros MICROSECOND,"
    " received_at = UTC_TIMESTAMP(6)"
)
# A window starts at a whole multiple of :w seconds since the epoch, as in txstream/windows.py.
WINDOWS_SQL = text("""
    INSERT INTO user_window_totals
        (user_id, window_start, tx_count, amount_sum, amount_min, amount_max, updated_at)
    SELECT user_id, TIMESTAMP'1970-01-01 00:00:00' + INTERVAL
               (TIMESTAMPDIFF(SECOND, TIMESTAMP'1970-01-01 00:00:00', ts) DIV :w * :w) SECOND
               AS start,
           COUNT(*), SUM(amount), MIN(amount), MAX(amount), UTC_TIMESTAMP(6)
    FROM transactions WHERE user_id BETWEEN :lo AND :hi GROUP BY user_id, start""")
NEWEST_SQL = text("""
    SELECT txn_id, user_id, amount, ts FROM (
        SELECT txn_id, user_id, amount, ts,
               ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts DESC, txn_id DESC) AS n
        FROM transactions WHERE user_id BETWEEN :lo AND :hi) newest
    WHERE n <= :keep""")


def seed(engine, client: redis.Redis, args) -> None:
    """Make the database and the recent lists anew; print how fast."""
    server = create_engine(engine.url.set(database=""))
    with server.begin() as conn:
        if not conn.execute(text("SELECT @@local_infile")).scalar():
            raise SystemExit("the server refuses LOAD DATA LOCAL: SET GLOBAL local_infile = 1")
        database = server.dialect.identifier_preparer.quote(engine.url.database)
        conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
    server.dispose()
    models.create_schema(engine)
    SEEDS.create(engine)
    # Without them the load only appends (id, ts and txn_id grow with each row), and each is
    # then built once, sorted. Kept, (user_id, ts) would take every row at a random place.
    secondary = sorted(models.transactions.indexes, key=lambda index: index.name)
    ddl(engine, map(DropIndex, secondary))
    phases = {
        "load": lambda: load(engine, args),
        "indexes": lambda: ddl(engine, map(CreateIndex, secondary)),
        "windows": lambda: fill_windows(engine, args),
        "recent lists": lambda: fill_recent(engine, client, args),
    }
    spent = {}
    for name, phase in phases.items():
        started = time.monotonic()
        phase()
        spent[name] = time.monotonic() - started
    check(engine, args)
    with engine.begin() as conn:
        conn.execute(SEEDS.insert(), [{"seed": describe(args), "at": utcnow()}])
    total = sum(spent.values())
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in spent.items())
    print(f"seeded {args.rows:,} rows in {total:.1f} s: {args.rows / total:,.0f} rows/s ({parts})")


def load(engine, args) -> None:
    """LOAD DATA the rows from files of LOAD_ROWS, each written while the one before loads."""
    rng = random.Random(1)  # nosec B311 # made-up rows, the same every run
    span = args.days * 86_400_000_000  # microseconds
    end = to_micros(utcnow())
    width = len(str(args.rows))

    def lines(first: int, count: int):
        # Row i gets the i-th slice of the span, so time and txn_id both grow with i.
        for i in range(first, first + count):
            cents = rng.randrange(-2_500, 47_500) or 1  # about 5% refunds
            micros = end - span + i * span // args.rows + rng.randrange(span // args.rows or 1)
            user = rng.randrange(args.users) + 1
            yield f"bench-{i:0{width}d}\t{user}\t{Decimal(cents).scaleb(-2)}\t{micros}\n"

    def load_file(path: Path) -> None:
        with engine.begin() as conn:
            conn.execute(LOAD_SQL, {"path": str(path)})

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as loader:
        loading = None
        for n, first in enumerate(range(0, args.rows, LOAD_ROWS)):
            path = Path(tmp) / f"{n % 2}.tsv"  # not the file that may be loading now
            with path.open("w") as f:
                f.writelines(lines(first, min(LOAD_ROWS, args.rows - first)))
            if loading:
                loading.result()
            loading = loader.submit(load_file, path)
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


def fill_windows(engine, args) -> None:
    """Sum the rows into user_window_totals, a range of users at a time."""
    for lo, hi in user_ranges(args):
        with engine.begin() as conn:
            conn.execute(WINDOWS_SQL, {"w": args.window_seconds, "lo": lo, "hi": hi})


def fill_recent(engine, client: redis.Redis, args) -> None:
    """Replace each user's recent list by their newest rows, written by txstream's store."""
    store = Store(engine, client, KEYS, args.window_seconds)
    with engine.connect() as conn:
        for lo, hi in user_ranges(args):
            newest = conn.execute(NEWEST_SQL, {"lo": lo, "hi": hi, "keep": RECENT_SIZE})
            client.delete(*(KEYS.recent(user) for user in range(lo, hi + 1)))
            store.write_redis(Committed(new=[Transaction(*row) for row in newest]), [])


def check(engine, args) -> None:
    """Fail unless the windows count each row once, and one user's equal txstream's own."""
    t, w = models.transactions, models.user_window_totals
    columns = ("user_id", "window_start", "tx_count", "amount_sum", "amount_min", "amount_max")
    with engine.connect() as conn:
        counted = conn.execute(select(func.sum(w.c.tx_count))).scalar()
        user = conn.execute(select(t.c.user_id).order_by(t.c.id).limit(1)).scalar()
        txns = conn.execute(
            select(t.c["txn_id", "user_id", "amount", "ts"]).where(t.c.user_id == user)
        )
        expected = window_totals((Transaction(*row) for row in txns), args.window_seconds)
        stored = conn.execute(
            select(w.c[columns]).where(w.c.user_id == user).order_by(w.c.window_start)
        )
        if counted != args.rows or list(map(tuple, stored)) != list(map(astuple, expected)):
            raise SystemExit(f"seed check failed: {counted} rows in windows; or user {user}")


def describe(args) -> str:
    """The seed that `args` ask for, in words."""
    return (
        f"{args.rows:,} transactions of {args.users:,} users over {args.days} days, "
        f"windows of {args.window_seconds} s"
    )


def seeded(engine, client: redis.Redis, args) -> bool:
    """Whether that seed is there, less than a day old. Refills the recent lists if lost."""
    try:
        with engine.connect() as conn:
            found = conn.execute(select(SEEDS)).first()
            t = models.transactions
            newest = conn.execute(select(t.c.user_id).order_by(t.c.ts.desc()).limit(1)).scalar()
    except SQLAlchemyError:  # no database or no table yet
        return False
    if found is None or found.seed != describe(args) or utcnow() - found.at > timedelta(days=1):
        return False
    print(f"using the seed of {found.at:%Y-%m-%d %H:%M} UTC (--reseed makes a new one)")
    if not client.exists(KEYS.recent(newest)):
        print("the recent lists are gone (Redis restarted?): filling them again")
        fill_recent(engine, client, args)
    return True


def serve(args) -> tuple[Script, str]:
    """The web app as `make serve` runs it, on a free port, on the benchmark's data.

    With tokens required, as by default; the rate limit is set far above what wrk sends
    (each request still counts itself in Redis, as in production).
    """
    bind = f"127.0.0.1:{free_port()}"
    env = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "KEY_PREFIX": KEYS.prefix}
    env |= {"SECRET_KEY": secrets.token_hex(32), "RATE_LIMIT": "100000000/minute"}
    env["AUTH"] = args.auth
    env |= {"WEB_BIND": bind, "WEB_WORKERS": str(args.workers), "WEB_THREADS": str(args.threads)}
    server = Script(*SERVE, env={**env, "LOG_LEVEL": "WARNING"})

    def healthy() -> bool:
        if server.proc.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{server.output}")
        try:
            health = f"http://{bind}/healthz"  # bandit B310: an http:// URL made here
            with urllib.request.urlopen(health, timeout=1) as response:  # nosec B310
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, 30, f"http://{bind}/healthz")
    return server, f"http://{bind}"


def wrk(url: str, path: str, users: int, connections: int, seconds: int, token: str) -> dict:
    """One wrk run, one thread keeping `connections` requests in flight: api.lua's result."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    command += ["-s", str(ROOT / "bench" / "api.lua"), url, "--", path, str(users), token]
    # bandit B603: wrk by a fixed argument list, no shell
    done = subprocess.run(command, capture_output=True, text=True, check=True)  # nosec B603
    output = done.stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


def context(engine, args) -> str:
    """Date, machine, versions and setup of the figures; a warning if the data outgrow RAM."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    sizes = "SUM(data_length + index_length) FROM information_schema.tables"
    with engine.connect() as conn:
        mariadb, pool = conn.execute(text("SELECT VERSION(), @@innodb_buffer_pool_size")).one()
        size = int(conn.execute(text(f"SELECT {sizes} WHERE table_schema = DATABASE()")).scalar())
    words = (
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}, MariaDB {mariadb.split('-')[0]}, gunicorn "
        f"{version('gunicorn')} ({args.workers} workers x {args.threads} threads) and wrk "
        f"(1 thread) on the same machine; {describe(args)}; {args.duration} s per run; "
        f"AUTH={args.auth}."
    )
    if size > pool:
        words += (
            f" The tables ({size >> 20:,} MiB) outgrow InnoDB's buffer pool ({pool >> 20:,} MiB)."
        )
    return words


def main() -> None:
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))  # its defaults, or WEB_* if set
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number = config.positive_int_flag
    parser.add_argument("--rows", type=number, default=10_000_000)
    parser.add_argument("--users", type=number, default=100_000)
    parser.add_argument("--days", type=number, default=30)
    parser.add_argument("--reseed", action="store_true", help="seed even if seeded already")
    parser.add_argument("--duration", type=number, default=10, help="seconds per run")
    parser.add_argument("--concurrency", type=number, nargs="+", default=[1, 8, 32])
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--workers", type=number, default=conf["workers"])
    parser.add_argument("--threads", type=number, default=conf["threads"])
    parser.add_argument(
        "--auth", choices=["on", "off"], default="on", help="AUTH of the app (default: on)"
    )
    args = parser.parse_args()
    args.window_seconds = config.load().window_seconds  # WINDOW_HOURS, as the app reads it
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    engine = create_engine(DATABASE_URL, connect_args={"local_infile": True})
    client = redis.Redis.from_url(REDIS_URL)
    if args.reseed or not seeded(engine, client, args):
        seed(engine, client, args)
    server, url = serve(args)
    token_name = f"bench-api-{os.getpid()}"
    models.create_schema(engine)  # a seed older than the tokens has no table for them
    token = tokens.create(engine, token_name)
    rows = []
    try:
        for name in args.endpoints:
            wrk(url, ENDPOINTS[name], args.users, 8, 1, token)  # warm-up, not reported
            for connections in args.concurrency:
                r = wrk(url, ENDPOINTS[name], args.users, connections, args.duration, token)
                rps = r["requests"] / r["duration_us"] * 1e6
                errors = r["non2xx"] + r["socket_errors"]
                rows.append((ENDPOINTS[name], connections, rps, r["p50_us"], r["p99_us"], errors))
                print(f"{name} x {connections}: {rps:,.0f} requests/s", file=sys.stderr)
    finally:
        server.stop()
        tokens.revoke(engine, token_name)
    python = os.path.relpath(sys.executable, ROOT)
    print(f"\n{context(engine, args)}\n\n```sh\n{shlex.join([python, *sys.argv])}\n```\n")
    print("| endpoint | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("|---|--:|--:|--:|--:|--:|")
    for path, connections, rps, p50, p99, errors in rows:
        print(ROW.format(path, connections, rps, p50 / 1e3, p99 / 1e3, errors))
    if any(row[-1] for row in rows):
        raise SystemExit("some requests failed: errors are non-2xx responses and socket errors")


if __name__ == "__main__":
    main()
