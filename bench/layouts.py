"""Which table layout keeps the hot set bounded (issue 21): a SQL-level lab.

No Redis, no subscriber: the lab replays txstream's database writes exactly (per batch of
1,000 transactions, in one transaction: a savepoint, the `INSERT IGNORE` of the batch,
`SELECT @@warning_count`, then the upserts of `user_window_totals` and `user_bucket_totals`;
the statements are the ones `txstream.store.Store.prepare` makes) into candidate schemas,
each on a PRIVATE mariadbd (own datadir in a temporary directory) with MariaDB's default
128 MB buffer pool and 96 MB redo log, its pool neither dumped nor loaded (a restart is
cold). It measures, per slice of 100,000 transactions, the database's rate (the time spent
in those statements; making them is not counted) and the engine's reads per transaction:
`Innodb_buffer_pool_reads` deltas, or MyRocks' `rocksdb_block_cache_miss` (its reads are
O_DIRECT, so each miss is a read from disk, as InnoDB's are).

Workloads:
  P  --p-count transactions (1,500,000) of --users (1,000,000) users into empty tables,
     event times rising as a live feed's (1,000 a second, the last one now).
  H  --h-rows rows of history (1,000,000 users, dated 2-60 days ago) made inside the
     server (INSERT ... SELECT from the sequence engine, secondary keys added afterwards,
     aggregates by INSERT ... SELECT), the server restarted (cold pool), then --h-live
     (300,000) live transactions of 1,000,000 users; then the reads txstream makes, timed
     on the final tables (the functions of txstream.queries and txstream.live themselves),
     with EXPLAIN PARTITIONS of the sums, and the duplicate check of a batch of 1,000
     txn_ids unbounded (txstream.store._stored) and bounded to event times within one day
     of the batch's.
  S  --s-count (200,000) transactions of --s-users (10,000) users, event times uniform over
     the last day, with the raw ceiling (a plain batched INSERT of the same rows, 1,000 a
     commit, into a copy of the candidate's `transactions`) measured before and after.
txn_ids: random UUID4 (`uuid4`), or time-ordered (`uuid7`: 48-bit milliseconds of the event
time first), the same form in the history the server makes.

Candidates: A today's layout (models.py); B day partitions on every table (RANGE on
TO_DAYS of the time column, keys with the time column as MariaDB requires); C B with
transactions clustered by (user_id, ts, txn_id); D MyRocks with today's keys; E MyRocks
with B's keys and partitions; F E with Bloom filters (only when named: --candidates F).
MyRocks needs Debian's `mariadb-plugin-rocksdb`: installed,
or its package only unpacked (`apt-get download mariadb-plugin-rocksdb; dpkg -x *.deb DIR`,
then --rocksdb-plugin-dir DIR/usr/lib/mysql/plugin), which leaves the system's servers as
they are.

Every run appends its figures to --results (JSON lines), and the Markdown tables are made
from that file, so runs made one at a time make one table:

    .venv/bin/python bench/layouts.py --workloads P --candidates A,B,C,D,E --ids uuid4
    .venv/bin/python bench/layouts.py --workloads H --h-rows 5000000
    .venv/bin/python bench/layouts.py --table            # the tables of what was run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path

import redis
from sqlalchemy import and_, create_engine, select
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateIndex, CreateTable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from txstream import live, queries  # noqa: E402
from txstream.aggregates import Layout, record_layout  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.store import Store, _stored  # noqa: E402
from txstream.testing import PrivateMariaDB  # noqa: E402
from txstream.times import from_micros, to_micros, utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402

RESULTS = ROOT / "bench" / "layouts.jsonl"
BATCH = 1000
WINDOW_SECONDS = 6 * 3600  # txstream's default WINDOW_HOURS
LAYOUT = Layout.for_window(WINDOW_SECONDS)
DAY = 86_400 * 10**6  # microseconds
FEED_RATE = 1000  # live transactions per second of event time
HISTORY_DAYS = (2, 60)  # history is dated this many days ago
HISTORY_CHUNK = 100_000  # history rows per INSERT ... SELECT (MyRocks locks each key of each row)
AGGREGATE_CHUNK = 100_000  # users per INSERT ... SELECT of their aggregates
DAYS_AHEAD = 2  # partitions made ahead of today
READ_SAMPLES = 200  # users per timed read
ROCKSDB_PLUGIN_DIRS = ("/usr/lib/mysql/plugin",)  # Debian's; else --rocksdb-plugin-dir
BLOOM = (
    "--rocksdb-default-cf-options=block_based_table_factory={filter_policy=bloomfilter:10:false;"
    "whole_key_filtering=1};prefix_extractor=capped:20"
)
INNODB_READS, ROCKSDB_READS = "Innodb_buffer_pool_reads", "Rocksdb_block_cache_miss"
SEED = 21


# --- The candidates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Keys3:
    """A table's keys: those made with it, and those added after a bulk load."""

    primary: tuple[str, ...]
    secondary: tuple[str, ...]


def model_parts(table) -> tuple[list[str], Keys3]:
    """The column clauses of a model's table, and its keys as models.py makes them."""
    ddl = str(CreateTable(table).compile(dialect=mysql.dialect()))
    body = ddl[ddl.index("(") + 1 : ddl.rindex(")")]
    clauses = [c.strip() for c in re.split(r",\s*\n", body) if c.strip()]
    keys = [c for c in clauses if c.startswith(("PRIMARY KEY", "CONSTRAINT"))]
    indexes = [
        re.sub(r"CREATE INDEX (\w+) ON \w+ ", r"KEY \1 ", str(CreateIndex(i).compile()))
        for i in sorted(table.indexes, key=lambda i: i.name)
    ]
    columns = [c for c in clauses if c not in keys]
    unique = tuple(re.sub(r"CONSTRAINT (\w+) UNIQUE", r"UNIQUE KEY \1", k) for k in keys[1:])
    return columns, Keys3((keys[0],), unique + tuple(indexes))


TABLES = {  # table -> its time column, by which it is partitioned
    "transactions": "ts",
    "user_window_totals": "window_start",
    "user_bucket_totals": "bucket_start",
}
SHORT = {"transactions": "tx", "user_window_totals": "windows", "user_bucket_totals": "buckets"}
MODEL = {name: model_parts(models.Base.metadata.tables[name]) for name in TABLES}
TODAY_KEYS = {name: keys for name, (_, keys) in MODEL.items()}
DAY_KEYS = {  # B: every unique key holds the partitioning column, as MariaDB requires
    "transactions": Keys3(
        ("PRIMARY KEY (id, ts)",),
        (
            "UNIQUE KEY uq_transactions_txn_id (txn_id, ts)",
            "KEY ix_transactions_user_ts (user_id, ts, txn_id, amount)",
            "KEY ix_transactions_ts (ts, txn_id)",
        ),
    ),
    "user_window_totals": TODAY_KEYS["user_window_totals"],
    "user_bucket_totals": TODAY_KEYS["user_bucket_totals"],
}
CLUSTERED_KEYS = {
    **DAY_KEYS,
    "transactions": Keys3(
        ("PRIMARY KEY (user_id, ts, txn_id)", "KEY ix_transactions_id (id)"),
        (
            "UNIQUE KEY uq_transactions_txn_id (txn_id, ts)",
            "KEY ix_transactions_ts (ts, txn_id)",
        ),
    ),
}


@dataclass(frozen=True)
class Candidate:
    """A layout of the three tables."""

    description: str
    engine: str
    keys: dict[str, Keys3]
    by_day: bool  # RANGE partitions by day on each table's time column
    server_options: tuple[str, ...] = ()

    @property
    def rocksdb(self) -> bool:
        return self.engine == "ROCKSDB"

    @property
    def reads_counter(self) -> str:
        return ROCKSDB_READS if self.rocksdb else INNODB_READS


CANDIDATES = {
    "A": Candidate("today's layout (models.py)", "InnoDB", TODAY_KEYS, False),
    "B": Candidate("day partitions, today's keys with ts", "InnoDB", DAY_KEYS, True),
    "C": Candidate(
        "B, transactions clustered by (user_id, ts, txn_id)", "InnoDB", CLUSTERED_KEYS, True
    ),
    "D": Candidate("MyRocks, today's keys", "ROCKSDB", TODAY_KEYS, False),
    "E": Candidate("MyRocks, B's keys and day partitions", "ROCKSDB", DAY_KEYS, True),
    # E with Bloom filters: a key that is nowhere (a new txn_id, a new window or bucket) is
    # then known absent without reading the files' blocks; the prefix one serves the
    # unique key's look-ups, which are by its first columns, not by a whole key.
    "F": Candidate(
        "E with Bloom filters (whole keys, and 20-byte prefixes)",
        "ROCKSDB",
        DAY_KEYS,
        True,
        (BLOOM,),
    ),
}


def create_table(
    cur, name: str, candidate: Candidate, today: dt.date, days_back: int, secondary: bool = True
) -> None:
    """Create `name` as `candidate` lays it out (without its secondary keys, for a bulk
    load, unless `secondary`); day partitions from `days_back` days ago to DAYS_AHEAD."""
    columns, _ = MODEL[name]
    keys = candidate.keys[name]
    clauses = [*columns, *keys.primary, *(keys.secondary if secondary else ())]
    ddl = f"CREATE TABLE {name} (\n  " + ",\n  ".join(clauses) + "\n)"
    ddl += f" ENGINE={candidate.engine} DEFAULT CHARSET=utf8mb4"
    if candidate.by_day:
        ddl += partitions(TABLES[name], today, days_back)
    cur.execute(ddl)


def partitions(column: str, today: dt.date, days_back: int) -> str:
    """RANGE partitions of one day each on `column`, made ahead as a subscriber would."""
    days = [today + dt.timedelta(days=d) for d in range(-days_back, DAYS_AHEAD + 1)]
    parts = ", ".join(
        f"PARTITION p{d:%Y%m%d} VALUES LESS THAN (TO_DAYS('{d + dt.timedelta(days=1)}'))"
        for d in days
    )
    return f" PARTITION BY RANGE (TO_DAYS({column})) ({parts})"


def add_secondary(cur, name: str, candidate: Candidate) -> None:
    """Add the secondary keys of `name` (after a bulk load: one sorted build each)."""
    if keys := candidate.keys[name].secondary:
        cur.execute(f"ALTER TABLE {name} " + ", ".join(f"ADD {k}" for k in keys))


def create_schema(
    server: LabServer, candidate: Candidate, today: dt.date, days_back: int, secondary: bool = True
) -> None:
    """The database `lab` with the three tables and `settings` (the layout recorded)."""
    with server.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE lab")
        cur.execute("USE lab")
        for name in TABLES:
            create_table(cur, name, candidate, today, days_back, secondary)
        cur.execute(str(CreateTable(models.settings).compile(dialect=mysql.dialect())))
    with server.engine().begin() as conn:
        record_layout(conn, LAYOUT)


# --- The server ----------------------------------------------------------------------------


class LabServer(PrivateMariaDB):
    """A private mariadbd with MariaDB's default pool and redo log, a cold pool at every
    start; with `rocksdb_plugin_dir`, MyRocks too (its block cache as large as the pool)."""

    database = "lab"
    INNODB = ("--innodb-buffer-pool-size=128M", "--innodb-log-file-size=96M")
    COLD = ("--innodb-buffer-pool-dump-at-shutdown=OFF", "--innodb-buffer-pool-load-at-startup=OFF")

    def __init__(
        self,
        directory: Path,
        template: Path,
        rocksdb_plugin_dir: str | None,
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(directory, template)
        self.rocksdb_plugin_dir = rocksdb_plugin_dir
        self.options = options

    def command(self) -> list[str]:
        """mariadbd's command line, with the lab's options."""
        rocks = (
            (
                f"--plugin-dir={self.rocksdb_plugin_dir}",
                "--plugin-load-add=ha_rocksdb.so",
                "--rocksdb-block-cache-size=128M",
                "--rocksdb-use-direct-reads=ON",
            )
            if self.rocksdb_plugin_dir
            else ()
        )
        return [*super().command(), *self.COLD, *rocks, *self.options, "--max-allowed-packet=256M"]

    def engine(self):
        """A SQLAlchemy engine on the database `lab`."""
        return create_engine(self.url, pool_size=1)

    def counter(self, name: str) -> int:
        """A global status counter."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            row = cur.fetchone()
        return int(row[1]) if row else 0

    def megabytes(self) -> float:
        """The size of the lab's files: InnoDB's tablespaces, or MyRocks' whole store."""
        files = [*(self.datadir / "lab").glob("*.ibd"), *(self.datadir / "#rocksdb").glob("*")]
        return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


@contextlib.contextmanager
def lab_server(args, candidate: Candidate) -> Iterator[LabServer]:
    """A started private server for one run, its files removed afterwards."""
    plugin_dir = rocksdb_plugin_dir(args) if candidate.rocksdb else None
    with tempfile.TemporaryDirectory(prefix="txstream-layouts-", dir=args.workdir) as tmp:
        server = LabServer(
            Path(tmp) / "server", args.template, plugin_dir, candidate.server_options
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()


def rocksdb_plugin_dir(args) -> str:
    """Where ha_rocksdb.so is; SystemExit when it is nowhere."""
    for d in [args.rocksdb_plugin_dir, *ROCKSDB_PLUGIN_DIRS]:
        if d and Path(d, "ha_rocksdb.so").exists():
            return d
    raise SystemExit("MyRocks: no ha_rocksdb.so; see --help (mariadb-plugin-rocksdb)")


# --- Transactions --------------------------------------------------------------------------


def txn_id(rng: random.Random, ids: str, ts: dt.datetime) -> str:
    """A random UUID4, or a UUIDv7 whose first 48 bits are the milliseconds of `ts`."""
    if ids == "uuid4":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    ms = to_micros(ts) // 1000
    rand = rng.getrandbits(74)
    value = (ms << 80) | (7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def amount(rng: random.Random) -> Decimal:
    """An amount of 0.01 to 999.99."""
    return Decimal(rng.randrange(1, 100_000)).scaleb(-2)


def feed(count: int, users: int, ids: str, seed: int, end: dt.datetime) -> Iterator[Transaction]:
    """A live feed: uniform users, event times rising FEED_RATE a second, the last at `end`."""
    rng = random.Random(seed)  # nosec B311 # made-up transactions, the same every run
    first = to_micros(end) - count * 10**6 // FEED_RATE
    for i in range(count):
        ts = from_micros(first + i * 10**6 // FEED_RATE)
        yield Transaction(txn_id(rng, ids, ts), rng.randrange(users) + 1, amount(rng), ts)


def last_day(
    count: int, users: int, ids: str, seed: int, end: dt.datetime
) -> Iterator[Transaction]:
    """Uniform users, event times uniform over the day before `end` (bench/ingest's hard)."""
    rng = random.Random(seed)  # nosec B311
    for _ in range(count):
        ts = from_micros(to_micros(end) - rng.randrange(DAY))
        yield Transaction(txn_id(rng, ids, ts), rng.randrange(users) + 1, amount(rng), ts)


def batches(txns: Iterable[Transaction]) -> Iterator[list[Transaction]]:
    """`txns` in batches of BATCH."""
    it = iter(txns)
    while batch := list(islice(it, BATCH)):
        yield batch


# --- Writing -------------------------------------------------------------------------------


def statement_maker(server: LabServer) -> Store:
    """txstream's Store, used only to make a batch's statements (no Redis is reached)."""
    return Store(server.engine(), redis.Redis(), Keys("lab:"), WINDOW_SECONDS)


def replay(
    server: LabServer, candidate: Candidate, txns: Iterable[Transaction], slice_size: int
) -> list[dict]:
    """Store `txns` as txstream's subscriber does; the figures of each slice."""
    maker, slices = statement_maker(server), []
    conn = server.connect(database="lab")
    reads, db_time, done, slice_start = server.counter(candidate.reads_counter), 0.0, 0, 0
    try:
        with conn.cursor() as cur:
            for batch in batches(txns):
                p = maker.prepare(batch)
                started = time.perf_counter()
                commit_batch(conn, cur, p, len(batch))
                db_time += time.perf_counter() - started
                done += len(batch)
                if done - slice_start >= slice_size:
                    now_reads = server.counter(candidate.reads_counter)
                    slices.append(
                        slice_figures(done, done - slice_start, db_time, now_reads - reads)
                    )
                    print(
                        f"  {done:>10,} tx  {slices[-1]['rate']:>8,.0f} tx/s  "
                        f"{slices[-1]['reads']:.2f} reads/tx",
                        flush=True,
                    )
                    reads, db_time, slice_start = now_reads, 0.0, done
    finally:
        conn.close()
    return slices


def commit_batch(conn, cur, prepared, n: int) -> None:
    """One batch, by the statements and steps of txstream.store's usual path."""
    conn.begin()
    cur.execute("SAVEPOINT sa_savepoint_1")
    inserted = cur.execute(prepared.insert)
    cur.execute("SELECT @@warning_count")
    if inserted != n or cur.fetchone()[0] != 0:
        raise SystemExit(f"the lab's batch was not stored whole: {inserted} of {n}")
    cur.execute("RELEASE SAVEPOINT sa_savepoint_1")
    cur.execute(prepared.add_to_windows)
    cur.execute(prepared.add_to_buckets)
    conn.commit()


def slice_figures(done: int, n: int, seconds: float, reads: int) -> dict:
    return {"stored": done, "rate": n / seconds, "reads": reads / n}


def raw_ceiling(server: LabServer, txns: Iterable[Transaction]) -> float:
    """Rows a second of a plain batched INSERT (BATCH a commit) of the same rows into an
    empty copy of the candidate's `transactions`, nothing else."""
    maker = statement_maker(server)
    conn = server.connect(database="lab")
    seconds, done = 0.0, 0
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS raw_copy")
            cur.execute("CREATE TABLE raw_copy LIKE transactions")
            for batch in batches(txns):
                sql = maker.prepare(batch).insert.replace(
                    "INSERT IGNORE INTO transactions ", "INSERT INTO raw_copy ", 1
                )
                started = time.perf_counter()
                cur.execute(sql)
                conn.commit()
                seconds += time.perf_counter() - started
                done += len(batch)
            cur.execute("DROP TABLE raw_copy")
    finally:
        conn.close()
    return done / seconds


# --- History -------------------------------------------------------------------------------


def uuid_sql(ids: str) -> str:
    """SQL of the txn_id of history row `seq`: the same forms `txn_id` makes."""
    h = "MD5(CONCAT('t', seq))"
    rest = f"'-', SUBSTR({h}, 18, 3), '-', SUBSTR({h}, 21, 12)"
    if ids == "uuid4":
        head = f"SUBSTR({h}, 1, 8), '-', SUBSTR({h}, 9, 4), '-4', SUBSTR({h}, 14, 3), '-a'"
    else:
        m = "LOWER(LPAD(HEX(FLOOR(UNIX_TIMESTAMP(ts) * 1000)), 12, '0'))"
        head = f"SUBSTR({m}, 1, 8), '-', SUBSTR({m}, 9, 4), '-7', SUBSTR({h}, 14, 3), '-a'"
    return f"CONCAT({head}, {rest})"


def load_history(
    server: LabServer, candidate: Candidate, rows: int, users: int, ids: str, end: dt.datetime
) -> dict:
    """`rows` of history made inside the server, then their keys and aggregates; timings."""
    per_user = max(rows // users, 1)
    low, span = HISTORY_DAYS[0] * DAY, (HISTORY_DAYS[1] - HISTORY_DAYS[0]) * DAY
    ts = (
        f"TIMESTAMP('{end}') - INTERVAL ({low} + "
        f"CONV(SUBSTR(MD5(CONCAT('s', seq)), 1, 12), 16, 10) % {span}) MICROSECOND"
    )
    cents = "CONV(SUBSTR(MD5(CONCAT('a', seq)), 1, 8), 16, 10) % 99999 + 1"
    timings = {}
    conn = server.connect(database="lab", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
            started = time.monotonic()
            for lo in range(1, rows + 1, HISTORY_CHUNK):
                hi = min(lo + HISTORY_CHUNK - 1, rows)
                cur.execute(
                    "INSERT INTO transactions (txn_id, user_id, amount, ts, received_at) "  # nosec B608
                    f"SELECT {uuid_sql(ids)}, (seq - 1) DIV {per_user} % {users} + 1, "
                    f"({cents}) / 100, ts, ts FROM "
                    f"(SELECT seq, {ts} AS ts FROM seq_{lo}_to_{hi}) AS history ORDER BY seq"
                )
            timings["rows_s"] = time.monotonic() - started
            started = time.monotonic()
            if not candidate.rocksdb:  # made with its keys
                add_secondary(cur, "transactions", candidate)
            timings["keys_s"] = time.monotonic() - started
            started = time.monotonic()
            aggregate_history(cur, users)
            if not candidate.rocksdb:
                add_secondary(cur, "user_window_totals", candidate)
            timings["aggregates_s"] = time.monotonic() - started
    finally:
        conn.close()
    return timings


def aggregate_history(cur, users: int) -> None:
    """The windows and buckets of the stored rows, by INSERT ... SELECT, a user range at a
    time (MyRocks locks every row it writes in a transaction)."""
    w, b = LAYOUT.window_seconds, LAYOUT.bucket_seconds
    start = (
        "TIMESTAMP('1970-01-01') + "
        "INTERVAL (TIMESTAMPDIFF(SECOND, '1970-01-01', ts) DIV {n} * {n}) SECOND"
    )
    for lo in range(1, users + 1, AGGREGATE_CHUNK):
        where = f"WHERE user_id BETWEEN {lo} AND {lo + AGGREGATE_CHUNK - 1}"
        cur.execute(
            "INSERT INTO user_window_totals SELECT user_id, "  # nosec B608 # made here
            f"{start.format(n=w)} AS ws, COUNT(*), SUM(amount), MIN(amount), MAX(amount), "
            f"UTC_TIMESTAMP(6) FROM transactions {where} GROUP BY user_id, ws ORDER BY user_id, ws"
        )
        cur.execute(
            "INSERT INTO user_bucket_totals SELECT user_id, "  # nosec B608 # made here
            f"{start.format(n=b)} AS bs, COUNT(*), SUM(amount) "
            f"FROM transactions {where} GROUP BY user_id, bs ORDER BY user_id, bs"
        )


# --- Reads ---------------------------------------------------------------------------------


def timed_reads(
    server: LabServer,
    candidate: Candidate,
    live_txns: list[Transaction],
    users: int,
    end: dt.datetime,
) -> dict:
    """ms and engine reads per call of each read txstream makes, on the final tables."""
    rng = random.Random(SEED)  # nosec B311
    sample = [rng.randrange(users) + 1 for _ in range(READ_SAMPLES)]
    window = from_micros(to_micros(end) // (WINDOW_SECONDS * 10**6) * WINDOW_SECONDS * 10**6)
    engine = server.engine()
    with engine.connect() as conn:
        max_id = conn.exec_driver_sql("SELECT MAX(id) FROM transactions").scalar()
        checked = rng.sample(live_txns, BATCH)
        per_user = {
            "sum 24 h": lambda u: queries.user_sum(
                conn, u, end - dt.timedelta(hours=24), end, LAYOUT
            ),
            "sum 720 h": lambda u: queries.user_sum(
                conn, u, end - dt.timedelta(hours=720), end, LAYOUT
            ),
            "sum 720 h, aggregates": lambda u: queries.user_sum(
                conn, u, end - dt.timedelta(hours=720), end, LAYOUT, few_rows=0
            ),
            "newest 50": lambda u: queries.transactions_page(conn, 50, user_id=u),
        }
        shared = {
            "live feed 500": lambda u: conn.execute(
                live._STORED_AFTER, {"after": max_id - 500 - u % 5000, "limit": 500}
            ).all(),
            "top users": lambda u: live._ranked(conn, window),
            "dup check 1,000, all history": lambda u: _stored(conn, checked),
            "dup check 1,000, ts +-1 day": lambda u: stored_near(conn, checked),
        }
        figures = {name: timed(server, candidate, fn, sample) for name, fn in per_user.items()}
        figures |= {name: timed(server, candidate, fn, sample[:20]) for name, fn in shared.items()}
        figures["explain"] = explained(conn, end, checked)
    return figures


def timed(server: LabServer, candidate: Candidate, fn, sample: list[int]) -> dict:
    """Mean ms and engine reads per call of `fn(user)` over `sample`."""
    calls = sample
    reads = server.counter(candidate.reads_counter)
    started = time.perf_counter()
    for u in calls:
        fn(u)
    ms = (time.perf_counter() - started) * 1000 / len(calls)
    return {"ms": ms, "reads": (server.counter(candidate.reads_counter) - reads) / len(calls)}


def near_query(txns: list[Transaction]):
    """The duplicate check bounded by the horizon: a stored txn_id counts only if its event
    time is within a day of the batch's, so only those days' partitions are probed."""
    t = models.transactions
    low = min(tx.ts for tx in txns) - dt.timedelta(days=1)
    high = max(tx.ts for tx in txns) + dt.timedelta(days=1)
    return select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).where(
        and_(t.c.txn_id.in_([tx.txn_id for tx in txns]), t.c.ts.between(low, high))
    )


def stored_near(conn, txns: list[Transaction]) -> int:
    """How many of `txns` are stored, by the bounded duplicate check."""
    return len(conn.execute(near_query(txns)).all())


def explained(conn, end: dt.datetime, txns: list[Transaction]) -> dict:
    """Partitions read per table (EXPLAIN PARTITIONS) by the 24 h and 720 h sums from the
    aggregates, and by the duplicate check of `txns`, bounded and not."""
    statements = {}
    for hours in (24, 720):
        parts = queries.split_range(end - dt.timedelta(hours=hours), end, LAYOUT)._asdict()
        params = {"user_id": 1, "window_seconds": str(WINDOW_SECONDS), **parts}
        statements[f"{hours} h"] = (queries._AGGREGATE_SUM, params)
    t = models.transactions
    statements["dup check"] = (near_query(txns), {})
    statements["dup check, all"] = (
        select(t.c.txn_id).where(t.c.txn_id.in_([x.txn_id for x in txns])),
        {},
    )
    result = {}
    for name, (statement, params) in statements.items():
        compiled = statement.compile(
            dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
        )
        rows = conn.exec_driver_sql(
            "EXPLAIN PARTITIONS " + compiled.string, compiled.construct_params(params)
        ).mappings()
        result[name] = [
            f"{SHORT[r['table']]}:{len(r['partitions'].split(','))}"
            for r in rows
            if r["table"] in TABLES and r["partitions"]
        ] or ["-"]
    return result


# --- Runs ----------------------------------------------------------------------------------


def run(args, workload: str, key: str, ids: str) -> dict:
    """One workload on one candidate; its figures."""
    candidate, end = CANDIDATES[key], utcnow()
    print(f"{workload} {key} ({candidate.description}), {ids}", flush=True)
    result = {
        "workload": workload,
        "candidate": key,
        "ids": ids,
        "when": str(end)[:16],
        "load": os.getloadavg()[0],
    }
    with lab_server(args, candidate) as server:
        if workload == "P":
            create_schema(server, candidate, end.date(), 1)
            txns = feed(args.p_count, args.users, ids, SEED, end)
            result["slices"] = replay(server, candidate, txns, args.slice)
        elif workload == "S":
            create_schema(server, candidate, end.date(), 1)
            made = lambda: last_day(args.s_count, args.s_users, ids, SEED, end)  # noqa: E731
            result["ceiling_before"] = raw_ceiling(server, made())
            result["slices"] = replay(server, candidate, made(), args.s_count)
            result["ceiling_after"] = raw_ceiling(server, made())
        else:
            # InnoDB builds a key sorted, after the load, far faster than row by row; an LSM
            # tree takes random keys as they come (and MyRocks' ALTER of 64 partitions is slow)
            secondary = candidate.rocksdb
            create_schema(server, candidate, end.date(), HISTORY_DAYS[1] + 1, secondary)
            history_end = end - dt.timedelta(seconds=args.h_live / FEED_RATE)
            result["history"] = load_history(
                server, candidate, args.h_rows, args.users, ids, history_end
            )
            result["history_rows"] = args.h_rows
            server.restart()  # a cold pool
            txns = list(feed(args.h_live, args.users, ids, SEED + 1, end))
            result["slices"] = replay(server, candidate, txns, args.slice)
            result["reads"] = timed_reads(server, candidate, txns, args.users, end)
        result["megabytes"] = server.megabytes()
    result["load_after"] = os.getloadavg()[0]
    with open(args.results, "a") as out:
        out.write(json.dumps(result) + "\n")
    return result


# --- Tables --------------------------------------------------------------------------------


def whole_rate(slices: list[dict]) -> float:
    """The rate over all slices (each weighted by its time)."""
    n = [s["stored"] - (slices[i - 1]["stored"] if i else 0) for i, s in enumerate(slices)]
    return sum(n) / sum(k / s["rate"] for k, s in zip(n, slices, strict=True))


def write_table(results: list[dict]) -> str:
    """The Markdown tables of `results` (the last run of each workload, candidate, ids)."""
    latest = {(r["workload"], r["candidate"], r["ids"]): r for r in results}
    lines = [
        "| workload | candidate | txn_ids | tx/s first slice | tx/s last slice | last/first "
        "| reads/tx first | reads/tx last | whole run tx/s | MB at end | load |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (workload, key, ids), r in sorted(latest.items()):
        s = r["slices"]
        first, last = s[0], s[-1]
        label = {"P": "P", "H": f"H ({r.get('history_rows', 0) / 1e6:g} M history)", "S": "S"}
        lines.append(
            f"| {label[workload]} | {key} | {ids} | {first['rate']:,.0f} | {last['rate']:,.0f} "
            f"| {last['rate'] / first['rate']:.2f} | {first['reads']:.2f} | {last['reads']:.2f} "
            f"| {whole_rate(s):,.0f} | {r['megabytes']:,.0f} | {r['load']:.1f} |"
        )
    lines += ["", *ceiling_table(latest), "", *history_table(latest), "", *reads_table(latest)]
    return "\n".join(lines)


def ceiling_table(latest: dict) -> list[str]:
    rows = [(k, r) for k, r in sorted(latest.items()) if k[0] == "S"]
    if not rows:
        return []
    lines = [
        "| S: candidate | txn_ids | tx/s | raw ceiling before / after (rows/s) | ratio |",
        "|---|---|--:|--:|--:|",
    ]
    for (_, key, ids), r in rows:
        rate = whole_rate(r["slices"])
        ceiling = statistics.mean([r["ceiling_before"], r["ceiling_after"]])
        lines.append(
            f"| {key} | {ids} | {rate:,.0f} | {r['ceiling_before']:,.0f} / "
            f"{r['ceiling_after']:,.0f} | {rate / ceiling:.2f} |"
        )
    return lines


def history_table(latest: dict) -> list[str]:
    rows = [(k, r) for k, r in sorted(latest.items()) if k[0] == "H"]
    if not rows:
        return []
    lines = [
        "| H: candidate | txn_ids | history rows | load s (rows / keys / aggregates) "
        "| live tx/s | ÷ P's first slice (empty tables) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for (_, key, ids), r in rows:
        h, rate = r["history"], whole_rate(r["slices"])
        empty = latest.get(("P", key, ids))
        ratio = f"{rate / empty['slices'][0]['rate']:.2f}" if empty else "-"
        lines.append(
            f"| {key} | {ids} | {r['history_rows']:,} | {h['rows_s']:.0f} / "
            f"{h['keys_s']:.0f} / {h['aggregates_s']:.0f} | {rate:,.0f} | {ratio} |"
        )
    return lines


EXPLAINED = ("24 h", "720 h", "dup check", "dup check, all")


def reads_table(latest: dict) -> list[str]:
    rows = [(k, r) for k, r in sorted(latest.items()) if k[0] == "H" and "reads" in r]
    if not rows:
        return []
    names = [n for n in rows[0][1]["reads"] if n != "explain"]
    lines = [
        "| reads on H's tables: ms (engine reads) | "
        + " | ".join(names)
        + " | partitions read: sum 24 h / 720 h / dup check +-1 day / all |",
        "|---|" + "--:|" * len(names) + "---|",
    ]
    for (_, key, ids), r in rows:
        cells = [f"{r['reads'][n]['ms']:.1f} ({r['reads'][n]['reads']:.0f})" for n in names]
        ex = r["reads"]["explain"]
        lines.append(
            f"| {key} {ids} | "
            + " | ".join(cells)
            + " | "
            + " / ".join(" ".join(ex.get(name, ["–"])) for name in EXPLAINED)
            + " |"
        )
    return lines


def machine() -> str:
    """The machine, for the docs."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} × {cpu}, {platform.system()} {platform.release()}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="P,H,S", help="of P, H, S (default: all)")
    parser.add_argument("--candidates", default="A,B,C,D,E", help="of " + ",".join(CANDIDATES))
    parser.add_argument("--ids", default="uuid4", help="uuid4, uuid7 or both (comma-separated)")
    parser.add_argument("--p-count", type=int, default=1_500_000)
    parser.add_argument("--users", type=int, default=1_000_000, help="users of P and H")
    parser.add_argument("--h-rows", type=int, default=10_000_000, help="history rows of H")
    parser.add_argument("--h-live", type=int, default=300_000)
    parser.add_argument("--s-count", type=int, default=200_000)
    parser.add_argument("--s-users", type=int, default=10_000)
    parser.add_argument("--slice", type=int, default=100_000, help="transactions per slice")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines, appended")
    parser.add_argument("--workdir", default=None, help="where the private datadirs go")
    parser.add_argument("--rocksdb-plugin-dir", default=None, help="the dir of ha_rocksdb.so")
    parser.add_argument("--table", action="store_true", help="only print the tables")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.table:
        with tempfile.TemporaryDirectory(prefix="txstream-layouts-template-") as tmp:
            args.template = Path(tmp) / "data"
            LabServer.install(args.template)
            for workload in args.workloads.split(","):
                for ids in args.ids.split(","):
                    for key in args.candidates.split(","):
                        run(args, workload, key, ids)
    results = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    print(f"\n{machine()}; 128 MB buffer pool / block cache\n")
    print(write_table(results))


if __name__ == "__main__":
    main()
