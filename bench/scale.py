"""A bank's scale (issue #21): the ingest rate as the population and the history grow.

Every figure comes from one subscriber (`sub_and_store.py`, TRANSPORT=stream) fed through
Redis as bench/ingest.py feeds its "hard" workload (txstream's own sink, the emitter's
chunks, a child process), on a PRIVATE mariadbd with MariaDB's InnoDB defaults (its 128 MB
buffer pool) and a private redis-server (AOF fsynced every second), both started here in a
temporary directory: the same measurement on any machine, nothing shared touched. txn_ids
are random UUID4s (a card network's ids are opaque), or time-ordered UUID7s (`--ids time`).

1. small: 200,000 tx of 10,000 users, uniform, event times over the last day, against
   the raw ceiling: the same rows INSERTed 1,000 a commit into a copy of `transactions`
   (CREATE TABLE ... LIKE), measured before and after the subscriber's run.
2. population: 1,500,000 tx of 1,000,000 users into empty tables, event times now (a live
   feed's). Sampled while it runs (the subscriber's progress lines, every 0.1 s): tx/s and
   InnoDB buffer-pool reads (`Innodb_buffer_pool_reads`, disk reads of pages the pool did
   not hold) per stored transaction, per slice of 100,000.
3. history: 200,000 tx of 1,000,000 users, event times now, into empty tables; then the
   same onto 10,000,000 rows of 1,000,000 users dated 2-60 days ago, seeded fast (LOAD DATA
   and the totals by SQL, bench/api.py's seed), with mariadbd restarted in between (its
   buffer pool cold, as after a restart: no reload of the pool's dump).

Prints a Markdown table of the goals (measured, target, PASS/FAIL), the per-slice figures,
and writes docs/scale.png: tx/s and buffer-pool reads per transaction against the rows in
`transactions` (log scale), each point a slice of a live ingest: the small workload's
(10,000 users, 0 -> 200,000 rows, slices of 20,000), the population run's (1,000,000 users,
0 -> 1,500,000, slices of 100,000), the empty-table run of (3) and, at the 10 M end, the
live ingest onto the seeded history (slices of 20,000 from 10.0 M to 10.2 M). Nothing is
measured between 1.5 M and 10 M rows (the seed does not go through the subscriber), nor
10,000 users beyond 200,000 rows.

    .venv/bin/python bench/scale.py                 # the full run: about 40 minutes
    .venv/bin/python bench/scale.py --quick         # 1/100 of every count: under a minute
    .venv/bin/python bench/scale.py --keep var/scale   # keep the seeded history for next time

`--keep DIR`: the datadir right after the history seed is kept in DIR and used again by
the next run with the same seed (seeding 10,000,000 rows takes most of a run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import api  # noqa: E402
import ingest  # noqa: E402
from apibench import mark_seeded, seed_found  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from emitter_and_pub import uuid4_text  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.rebuild_redis import RedisRebuild  # noqa: E402
from txstream.testing import PrivateMariaDB, PrivateRedis  # noqa: E402

CHART = ROOT / "docs" / "scale.png"
DAY_MICROS = ingest.DAY_MICROS
CEILING_BATCH = 1_000  # rows a commit of the raw ceiling, as the issue defines it
CEILING_TABLE = "transactions_ceiling"
POLL = 0.05  # seconds between looks at the subscriber's progress
STATS_INTERVAL = "0.1"  # seconds between the subscriber's progress lines
STALL = 300  # seconds without a stored row before the run counts as failed
HISTORY_AGO = (2, 60)  # days: the seeded history's oldest and newest event times
KEPT_FOR = datetime.timedelta(days=7)  # a kept seed older than this is made anew
HISTORY_DB, SCALE_DB = "txstream_history", "txstream_scale"
QUICK = 100  # --quick divides every count by this: a check that it runs, not a measurement
STORED = re.compile(r"\bstored=(\d+)")


@dataclass(frozen=True)
class Counts:
    """How many transactions, users and rows each workload has (the issue's, or 1/20)."""

    small: int = 200_000
    small_users: int = 10_000
    small_slice: int = 20_000  # for the chart
    population: int = 1_500_000
    users: int = 1_000_000  # of the population and the history
    slice: int = 100_000
    ends: int = 200_000  # the population run's first and last this many are compared
    history: int = 10_000_000
    live: int = 200_000  # ingested onto empty tables, then onto the history
    live_slice: int = 20_000

    def divided(self, by: int) -> Counts:
        """Every count divided by `by`: the same run, smaller."""
        return Counts(*(n // by for n in vars(self).values()))


@dataclass(frozen=True)
class Live:
    """A workload for ingest.Feeder: `count` transactions of `users` users, uniform, each
    event time up to `spread` µs before it is sent (0: now)."""

    count: int
    users: int
    spread: int
    time_ids: bool
    seed: int = ingest.SEED

    def transactions(self) -> Iterator:
        """The transactions, the same every run but for the times (and time-ordered ids)."""
        return ingest.uniform_transactions(
            self.count, self.users, self.spread, self.time_ids, self.seed
        )


class BenchMariaDB(PrivateMariaDB):
    """A private mariadbd with MariaDB's InnoDB defaults (a 128 MB buffer pool, not the
    tests' small one), whose restart starts cold: no reload of the buffer pool's dump."""

    INNODB = ()

    def command(self) -> list[str]:
        """PrivateMariaDB's command line, the pool not reloaded, LOAD DATA LOCAL allowed."""
        return [
            *super().command(),
            "--innodb-buffer-pool-load-at-startup=OFF",
            "--local-infile=ON",
        ]


@dataclass
class Bench:
    """The private servers of a run."""

    mariadb: BenchMariaDB
    redis: PrivateRedis

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on the private mariadbd."""
        return str(make_url(self.mariadb.url).set(database=database))

    def engine(self, database: str) -> Engine:
        """An engine on `database`, LOAD DATA LOCAL allowed."""
        return create_engine(self.url(database), connect_args={"local_infile": True})

    def pool_reads(self) -> int:
        """InnoDB's buffer-pool reads so far: pages it had to read from disk."""
        with self.mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'")
            return int(cur.fetchone()[1])


@contextlib.contextmanager
def private_servers(keep: Path | None) -> Iterator[Bench]:
    """A private mariadbd and redis-server in a temporary directory, removed at the end;
    the mariadbd from the datadir kept in `keep` if there is one."""
    kept = keep / "data" if keep else None
    with tempfile.TemporaryDirectory(prefix="txstream-scale-") as tmp:
        template = kept if kept and kept.exists() else None
        mariadb = BenchMariaDB(Path(tmp) / "mariadb", template=template)
        server = PrivateRedis(Path(tmp) / "redis", appendfsync="everysec")
        try:
            mariadb.start()
            server.start()
            yield Bench(mariadb, server)
        finally:
            server.kill()
            mariadb.kill()


# --- One live ingest, sampled ---------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    rows: int  # stored by this run so far
    at: float  # time.monotonic()
    reads: int  # Innodb_buffer_pool_reads so far


@dataclass
class Ingest:
    """What one subscriber's run measured, from the feed's start to its last row."""

    name: str
    users: int
    before: int  # rows in `transactions` when it started
    samples: list[Sample]

    def at(self, rows: int) -> Sample:
        """The first sample with at least `rows` stored."""
        return next(s for s in self.samples if s.rows >= rows)

    def rate(self, first: int = 0, last: int | None = None) -> float:
        """tx/s while the run stored its rows `first` to `last` (default: all)."""
        return self._between(first, last)[0]

    def reads_per_tx(self, first: int = 0, last: int | None = None) -> float:
        """Buffer-pool reads per transaction stored while it stored `first` to `last`."""
        return self._between(first, last)[1]

    def _between(self, first: int, last: int | None) -> tuple[float, float]:
        return slice_figures(self.at(first), self.at(self.count if last is None else last))

    @property
    def count(self) -> int:
        """How many transactions it stored."""
        return self.samples[-1].rows

    def slices(self, size: int) -> list[tuple[int, float, float]]:
        """(rows in the table at the slice's end, tx/s, reads per tx) per slice of about
        `size`: from sample to sample, the first at or past each multiple of `size`."""
        wanted = range(size, self.count + size, size)
        ends = sorted({self.at(min(end, self.count)) for end in wanted}, key=lambda s: s.rows)
        return [
            (self.before + b.rows, *slice_figures(a, b))
            for a, b in zip([self.samples[0], *ends], ends, strict=False)
        ]


def slice_figures(a: Sample, b: Sample) -> tuple[float, float]:
    """tx/s and buffer-pool reads per transaction from sample `a` to sample `b`."""
    rows = b.rows - a.rows
    return rows / (b.at - a.at), (b.reads - a.reads) / rows


def watch(subscriber: Script, count: int, reads: Callable[[], int]) -> list[Sample]:
    """Samples of the subscriber's progress until it has stored `count`; the first one now.

    From its progress lines (`stored=N`, every STATS_INTERVAL s): whatever the tables'
    layout, and without a query that would take MariaDB's time from the run.
    """
    samples = [Sample(0, time.monotonic(), reads())]
    seen = 0
    while samples[-1].rows < count:
        time.sleep(POLL)
        lines = subscriber.lines[seen:]
        seen += len(lines)
        found = [int(m[1]) for m in map(STORED.search, lines) if m]
        if found and found[-1] > samples[-1].rows:
            samples.append(Sample(found[-1], time.monotonic(), reads()))
        elif subscriber.proc.poll() is not None:
            raise SystemExit(f"the subscriber exited:\n{subscriber.output}")
        elif time.monotonic() - samples[-1].at > STALL:
            raise SystemExit(f"LOST: {count - samples[-1].rows} of {count} not stored in {STALL} s")
    return samples


def live_ingest(
    bench: Bench, database: str, load: Live, name: str, before: int = 0, flush: bool = True
) -> Ingest:
    """Send `load` in a burst to one subscriber on `database`, which holds `before` rows;
    checks that every table counts each transaction once. `flush`: empty Redis first (else
    it holds the database's derived state, `derive_redis`, and no stream)."""
    if flush:
        client = redis.Redis.from_url(bench.redis.url)
        client.flushdb()
        client.close()
    env = {**ingest.script_env(ROOT, bench.url(database), bench.redis.url), "TRANSPORT": "stream"}
    subscriber = Script("sub_and_store.py", "--stats-interval", STATS_INTERVAL, env=env)
    try:
        subscriber.wait_for_line(r"reading", timeout=120)
        samples = watch_feed(bench, subscriber, load)
    finally:
        subscriber.stop(timeout=120)
    engine = bench.engine(database)
    ingest.check_exactly_once(engine, before + load.count, ROOT)
    engine.dispose()
    result = Ingest(name, load.users, before, samples)
    rate, reads = result.rate(), result.reads_per_tx()
    print(f"#   {name}: {rate:,.0f} tx/s, {reads:.2f} reads/tx", flush=True)
    return result


def watch_feed(bench: Bench, subscriber: Script, load: Live) -> list[Sample]:
    """Start the feed, then watch the subscriber store it all."""
    feeder = ingest.Feeder(load, "stream", bench.redis.url)
    samples = watch(subscriber, load.count, bench.pool_reads)
    feeder.wait_ok(60)
    return samples


def fresh_database(bench: Bench, name: str) -> None:
    """Drop database `name` and make it anew with txstream's (empty) tables."""
    with bench.mariadb.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")  # nosec B608 # one of ours
    engine = bench.engine(name)
    models.create_schema(engine)
    engine.dispose()


# --- The workloads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Small:
    ingest: Ingest
    ceilings: tuple[float, float]  # rows/s, before and after the ingest

    @property
    def ratio(self) -> float:
        """The ingest's rate against the ceilings' mean."""
        return self.ingest.rate() / (sum(self.ceilings) / 2)


def small(bench: Bench, counts: Counts, time_ids: bool) -> Small:
    """The small population against the raw ceiling of the same rows."""
    load = Live(counts.small, counts.small_users, DAY_MICROS, time_ids)
    fresh_database(bench, SCALE_DB)
    before = ceiling(bench, load)
    result = live_ingest(bench, SCALE_DB, load, f"{counts.small_users:,} users, empty tables")
    after = ceiling(bench, load)
    print(f"#   raw ceiling: {before:,.0f} and {after:,.0f} rows/s", flush=True)
    return Small(result, (before, after))


def ceiling(bench: Bench, load: Live) -> float:
    """rows/s of `load`'s rows INSERTed CEILING_BATCH a commit into an empty copy of
    `transactions`, in the same database."""
    engine = bench.engine(SCALE_DB)
    rows = ingest.ceiling_rows(load)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {CEILING_TABLE}"))
        conn.execute(text(f"CREATE TABLE {CEILING_TABLE} LIKE transactions"))
    seconds = ingest.insert_batches(engine, rows, CEILING_TABLE, CEILING_BATCH)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {CEILING_TABLE}"))
    engine.dispose()
    return len(rows) / seconds


def population(bench: Bench, counts: Counts, time_ids: bool) -> Ingest:
    """A million users' live feed into empty tables, past the buffer pool."""
    fresh_database(bench, SCALE_DB)
    load = Live(counts.population, counts.users, 0, time_ids)
    return live_ingest(bench, SCALE_DB, load, f"population: {counts.users:,} users, empty tables")


def history(bench: Bench, counts: Counts, time_ids: bool, keep: Path | None) -> list[Ingest]:
    """The live feed on empty tables, then on the seeded history after a cold restart."""
    load = Live(counts.live, counts.users, 0, time_ids, seed=ingest.SEED + 1)
    fresh_database(bench, SCALE_DB)
    empty = live_ingest(bench, SCALE_DB, load, f"live: {counts.users:,} users, empty tables")
    with bench.mariadb.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {SCALE_DB}")  # nosec B608 # one of ours: not in the kept copy
    seeded = seed_history(bench, counts, time_ids)
    derive_redis(bench, HISTORY_DB)  # before the restart: the pool starts cold all the same
    bench.mariadb.stop()
    if keep and seeded:
        shutil.rmtree(keep / "data", ignore_errors=True)
        shutil.copytree(bench.mariadb.datadir, keep / "data")
    bench.mariadb.start()
    name = f"live: {counts.users:,} users, on {counts.history:,} rows of history (cold)"
    full = live_ingest(bench, HISTORY_DB, load, name, before=counts.history, flush=False)
    return [empty, full]


def derive_redis(bench: Bench, database: str) -> None:
    """Empty Redis, then derive its state (recent lists, counts) from `database`, as a
    running system's Redis holds it: else the subscriber would rebuild it from the whole
    history while it ingests."""
    client = redis.Redis.from_url(bench.redis.url)
    client.flushdb()
    engine = bench.engine(database)
    RedisRebuild(engine, client, Keys(ingest.KEY_PREFIX), "bench-scale").rebuild()
    engine.dispose()
    client.close()


def seed_history(bench: Bench, counts: Counts, time_ids: bool) -> bool:
    """`counts.history` rows of `counts.users` users dated 2-60 days ago, with their totals
    (bench/api.py's seed), unless the kept datadir holds them already; whether it seeded."""
    engine = bench.engine(HISTORY_DB)
    description = history_description(counts, time_ids)
    found = seed_found(engine, description, KEPT_FOR)
    if not found:
        args = argparse.Namespace(
            rows=counts.history, users=counts.users, days=HISTORY_AGO[1] - HISTORY_AGO[0]
        )
        txn_ids = time_ordered_ids if time_ids else random_ids
        lines = api.seed_lines(api.seed_layout(args), HISTORY_AGO[0], txn_ids(ingest.SEED + 2))
        api.seed(engine, None, args, lines)
        mark_seeded(engine, description)
    engine.dispose()
    return not found


def history_description(counts: Counts, time_ids: bool) -> str:
    """The seeded history in words, as kept with it."""
    ids = "time-ordered" if time_ids else "random"
    first, last = HISTORY_AGO
    return (
        f"scale: {counts.history:,} transactions of {counts.users:,} users, "
        f"{first}-{last} days ago, {ids} txn_ids, windows of {config.load().window_seconds} s"
    )


def random_ids(seed: int) -> Callable[[int, int], str]:
    """txn_ids as api.seed_lines takes them: random UUID4s, the same every run."""
    rng = random.Random(seed)  # nosec B311 # made-up ids

    return lambda _, __: uuid4_text(rng.getrandbits(128))


def time_ordered_ids(seed: int) -> Callable[[int, int], str]:
    """txn_ids as api.seed_lines takes them: UUID7s of their event times."""
    rng = random.Random(seed)  # nosec B311 # made-up ids

    return lambda _, micros: ingest.uuid7_text(micros, rng.getrandbits(74))


# --- The report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    measured: float
    target: float
    unit: str  # "x" for a ratio
    at_most: bool = False  # the target is a maximum

    @property
    def met(self) -> bool:
        """Whether the measured value reaches the target."""
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    def row(self) -> str:
        """The goal's row of the Markdown table."""
        sign = "<=" if self.at_most else ">="
        cells = [self.name, f"{self.measured:.2f}{self.unit}", f"{sign} {self.target}{self.unit}"]
        return "| " + " | ".join([*cells, "PASS" if self.met else "FAIL"]) + " |"


def goals(counts: Counts, small_run: Small, pop: Ingest, live: list[Ingest]) -> list[Goal]:
    """The issue's goals, from the runs."""
    n, total = counts.ends, pop.count
    first, last = pop.rate(0, n), pop.rate(total - n, total)
    empty, full = live
    return [
        Goal("small: tx/s / raw ceiling", small_run.ratio, 0.45, "x"),
        Goal(f"population: last {n:,} / small's tx/s", last / small_run.ingest.rate(), 0.5, "x"),
        Goal(f"population: last {n:,} / first {n:,}", last / first, 0.8, "x"),
        Goal(
            f"population: buffer-pool reads per tx, last {n:,}",
            pop.reads_per_tx(total - n, total),
            1,
            "",
            at_most=True,
        ),
        Goal("history: live tx/s on it / on empty tables", full.rate() / empty.rate(), 0.8, "x"),
    ]


def report(counts: Counts, small_run: Small, pop: Ingest, live: list[Ingest]) -> str:
    """The goals' table, then the figures behind them."""
    n, total = counts.ends, pop.count
    lines = ["| goal | measured | target | |", "|---|--:|--:|---|"]
    lines += [goal.row() for goal in goals(counts, small_run, pop, live)]
    lines += ["", "| run | rows in the table at the end | tx/s | reads per tx |"]
    lines.append("|---|--:|--:|--:|")

    def row(name: str, ingest_run: Ingest, first: int = 0, last: int | None = None) -> str:
        end = ingest_run.before + (ingest_run.count if last is None else last)
        rate, reads = ingest_run.rate(first, last), ingest_run.reads_per_tx(first, last)
        return f"| {name} | {end:,} | {rate:,.0f} | {reads:.2f} |"

    before, after = small_run.ceilings
    lines.append(f"| raw ceiling (before, after): {before:,.0f}, {after:,.0f} rows/s | | | |")
    lines.append(row(small_run.ingest.name, small_run.ingest))
    lines.append(row(f"{pop.name}: first {n:,}", pop, 0, n))
    for end, rate, reads in pop.slices(counts.slice):
        lines.append(f"| {pop.name}: slice | {end:,} | {rate:,.0f} | {reads:.2f} |")
    lines.append(row(f"{pop.name}: last {n:,}", pop, total - n, total))
    lines += [row(run.name, run) for run in live]
    return "\n".join(lines)


def chart(curves: list[tuple[Ingest, int]], title: str) -> None:
    """tx/s and reads per transaction against the rows in the table, a point per slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, reads) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for run, size in curves:
        points = run.slices(size)
        x = [end for end, _, _ in points]
        label = f"{run.name} (slices of {size:,})"
        rates.plot(x, [rate for _, rate, _ in points], ".-", label=label)
        reads.plot(x, [r for _, _, r in points], ".-", label=label)
    rates.set_ylabel("transactions per second")
    rates.yaxis.set_major_formatter(lambda y, _: f"{y:,.0f}")
    rates.set_ylim(bottom=0)
    reads.set_ylabel("buffer-pool reads per transaction")
    reads.set_ylim(bottom=0)
    reads.set_xscale("log")
    reads.set_xlabel("rows in `transactions` at the slice's end (log scale)")
    reads.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    rates.legend(fontsize=8)
    rates.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)


def load_average() -> str:
    """The 1-minute load average now (other jobs share the machine)."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"1/{QUICK} of every count")
    parser.add_argument(
        "--ids",
        choices=("uuid", "time"),
        default="uuid",
        help="txn_ids: random UUID4 (default) or time-ordered UUID7",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the seeded history's datadir in DIR"
    )
    parser.add_argument("--no-chart", action="store_true", help=f"do not write {CHART}")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as after Ctrl-C
    counts = Counts().divided(QUICK) if args.quick else Counts()
    time_ids = args.ids == "time"
    cpu = ingest.cpu_model()
    title = (
        f"{datetime.date.today()}, {os.cpu_count()} cores ({cpu}), MariaDB's 128 MB buffer "
        f"pool, one subscriber, {'time-ordered' if time_ids else 'random'} txn_ids"
    )
    print(f"# {title}; load average {load_average()} at the start", flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with private_servers(args.keep) as bench:
        small_run = small(bench, counts, time_ids)
        pop = population(bench, counts, time_ids)
        live = history(bench, counts, time_ids, args.keep)
    print(f"# load average {load_average()} at the end\n")
    print(report(counts, small_run, pop, live))
    if not args.no_chart:
        curves = [(small_run.ingest, counts.small_slice), (pop, counts.slice)]
        chart([*curves, *((run, counts.live_slice) for run in live)], title)
        print(f"\nchart: {CHART.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
