"""End-to-end ingest throughput: a burst of transactions -> Redis -> consumer(s) -> MariaDB.

Two workloads, each measured in every mode: "typical", the emitter's burst (a few heavy
users, every event time now); and "hard", users drawn uniformly from `--users` and event
times spread uniformly over the last day, so that nearly every transaction of a batch has
a (user, window) and a bucket of its own. The emitter cannot make the hard one: the
harness makes it (same seed, same rows every run) and sends it with txstream's own sink,
in the emitter's chunks, from a child process started when the emitter would be.

For each mode, the time from the feed's start to the last row committed, on the real
Redis and MariaDB: (a) the seed's naive design, one INSERT+COMMIT per message
(bench/naive_subscriber.py); (b) txstream over pub/sub; (c) txstream over the stream with
1 and 2 subscribers, each run checked for exactly once (rows, window totals, and bucket
totals where the tree writes them); and (d) the raw ceiling: the same rows of the same
workload INSERTed straight into MariaDB in batches, nothing else. Each mode's rate is also
shown as a ratio to the ceiling of its workload.
Also each subscriber's peak RSS and CPU seconds, the Redis server's CPU seconds, and for
pub/sub how much backlog it absorbs before loss. Writes the table (Markdown) to stdout and
a chart to docs/ingest.png.

With `--baseline REV`, each mode but (d) also runs the scripts of REV, checked out into a
temporary git worktree (removed at the end), alternating with the current tree's run by
run, so the table has a "before (REV)" and an "after" row per mode from the same session.

    .venv/bin/python bench/ingest.py                       # 200,000 tx, 10,000 users, 3 runs
    .venv/bin/python bench/ingest.py --count 1000000 --modes c1 --runs 1   # RSS at 1M
    .venv/bin/python bench/ingest.py --baseline b9c915c    # before (b9c915c) and after
    .venv/bin/python bench/ingest.py --workloads hard --modes c1,d   # one workload

Uses the database `txstream_bench` and Redis db 14 (emptied first); override with
BENCH_DATABASE_URL / BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import redis
from sqlalchemy import func, inspect, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trees import AFTER, checkouts  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from emitter_and_pub import BURST_CHUNK, FakeTransactions  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.times import from_micros, to_micros, utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402
from txstream.transport import make_sink  # noqa: E402
from txstream.wire import format_line  # noqa: E402

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SEED = 1
NAME = "bench"  # the channel and the stream
KEY_PREFIX = "bench:"
DAY_MICROS = 86_400 * 10**6
BATCH = config.Settings.batch_size  # rows per transaction of the raw ceiling, as the subscriber
CHART = ROOT / "docs" / "ingest.png"
PER = 200_000  # Redis CPU is also shown per this many transactions
# The tables that count each transaction once, besides the rows: (name, table).
TOTALS = (("windows", models.user_window_totals), ("buckets", models.user_bucket_totals))


@dataclass
class Run:
    rate: float  # transactions per second, end to end
    peak_rss_mb: float | None = None  # the largest consumer's peak resident memory
    redis_cpu_s: float | None = None  # the Redis server's CPU, feed start to last row
    consumer_cpu_s: float | None = None  # the consumers' own CPU, summed, until the last row
    batch_writes_s: float | None = None  # Redis's time in the subscribers' batch writes
    checked: tuple[str, ...] = ()  # what counted each transaction exactly once


@dataclass(frozen=True)
class Load:
    """What a run sends: `count` transactions of `users` users, made by `workload`."""

    workload: str
    count: int
    users: int

    def transactions(self) -> Iterator[Transaction]:
        """The workload's transactions, the same every run (the seed is fixed)."""
        return WORKLOADS[self.workload].transactions(self.count, self.users)


def typical_transactions(count: int, users: int) -> Iterator[Transaction]:
    """The emitter's burst: its own generator and seed (a few heavy users, times now)."""
    # bandit B311: made-up transactions, the same every run
    source = FakeTransactions(users, random.Random(SEED))  # nosec B311
    return (source.next() for _ in range(count))


def hard_transactions(count: int, users: int) -> Iterator[Transaction]:
    """Users uniform over all `users`, event times uniform over the last day."""
    return uniform_transactions(count, users, DAY_MICROS)


def uniform_transactions(
    count: int, users: int, spread: int, time_ids: bool = False, seed: int = SEED
) -> Iterator[Transaction]:
    """Users uniform over all `users`, each event time up to `spread` µs before it is made
    (0: made now, as a live feed's), made as they are sent.

    The emitter's amounts and txn_ids (its generator, seeded); only the user and the
    time are drawn anew. Times lie in the past, within what the subscriber accepts.
    `time_ids`: time-ordered txn_ids (`uuid7_text` of the moment each is made) instead
    of the emitter's random UUID4s, as a card network that makes them would send.
    """
    rng = random.Random(seed)  # nosec B311 # made-up transactions, the same every run
    source = FakeTransactions(users, rng)
    for _ in range(count):
        tx = source.next()
        now = to_micros(utcnow())
        txn_id = uuid7_text(now, rng.getrandbits(74)) if time_ids else tx.txn_id
        ts = from_micros(now - rng.randrange(spread) if spread else now)
        yield Transaction(txn_id, rng.randrange(users) + 1, tx.amount, ts)


def uuid7_text(micros: int, bits: int) -> str:
    """A time-ordered UUID (version 7, RFC 9562): the millisecond of `micros` since the
    epoch, then 74 random `bits`; ids made later sort after, but within a millisecond."""
    rand_a, rand_b = bits >> 62, bits & (2**62 - 1)
    value = (micros // 1000) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


class Workload(NamedTuple):
    description: str
    transactions: Callable[[int, int], Iterator[Transaction]]  # (count, users) -> them


WORKLOADS = {
    "typical": Workload("the emitter's burst", typical_transactions),
    "hard": Workload("uniform users, times over the last day", hard_transactions),
}


def feed(load: Load, transport: str, redis_url: str = REDIS_URL) -> None:
    """Send the load's transactions with txstream's sink, BURST_CHUNK lines per call.

    The stream's cap is raised to the load's size: the whole burst may wait in it.
    """
    settings = config.Settings(
        redis_url=redis_url,
        transport=transport,
        channel=NAME,
        stream=NAME,
        key_prefix=KEY_PREFIX,
        stream_maxlen=max(config.Settings.stream_maxlen, load.count),
    )
    client = redis.Redis.from_url(redis_url)
    sink = make_sink(settings, client)
    txns = load.transactions()
    while lines := [format_line(tx) for tx in islice(txns, BURST_CHUNK)]:
        sink.send(lines)
    client.close()


class Feeder:
    """`feed` in a child process: the harness's stand-in for the emitter, with a `wait_ok`."""

    def __init__(self, load: Load, transport: str, redis_url: str = REDIS_URL) -> None:
        # fork: the child starts at once, without importing anything again
        self.proc = multiprocessing.get_context("fork").Process(
            target=feed, args=(load, transport, redis_url), name="feeder", daemon=True
        )
        self.proc.start()

    def wait_ok(self, timeout: float) -> None:
        """Wait until everything is sent; fail if the child failed or is still sending."""
        self.proc.join(timeout)
        if self.proc.exitcode != 0:
            self.proc.kill()
            raise AssertionError(f"the feeder exited with {self.proc.exitcode}")


def start_feed(load: Load, env: dict, tree: Path) -> Script | Feeder:
    """Start sending: the emitter of `tree` (typical), else the harness's own feeder."""
    if load.workload == "typical":
        return Script(
            "emitter_and_pub.py",
            *("--rate", "0", "--quiet", "--count", str(load.count)),
            *("--users", str(load.users), "--seed", str(SEED)),
            env={**env, "LOG_LEVEL": "WARNING"},
            cwd=tree,
        )
    return Feeder(load, env["TRANSPORT"])


def stored(engine) -> dict[str, int]:
    """Rows in transactions, and how many transactions each totals table counts.

    {"rows": N, "windows": N, "buckets": N}; "buckets" only where there is such a table.
    """
    with engine.connect() as conn:
        counts = {"rows": conn.scalar(select(func.count()).select_from(models.transactions))}
        for name, table in TOTALS:
            if inspect(conn).has_table(table.name):
                counts[name] = int(
                    conn.scalar(select(func.coalesce(func.sum(table.c.tx_count), 0)))
                )
        return counts


def writes_buckets(tree: Path) -> bool:
    """Whether the subscriber of `tree` maintains user_bucket_totals.

    By its module (schema.sql names txstream/aggregates.py): the table itself came a
    commit earlier (d57d2b0), so models.py is no sign.
    """
    return (tree / "txstream" / "aggregates.py").exists()


def check_exactly_once(engine, count: int, tree: Path) -> tuple[str, ...]:
    """Fail unless every table counts each of `count` transactions once; what was checked.

    Bucket totals count if the tree writes them, or if it wrote any at all.
    """
    counts = stored(engine)
    if not (writes_buckets(tree) or counts.get("buckets")):
        counts.pop("buckets", None)
    if any(n != count for n in counts.values()):
        found = ", ".join(f"{n} {name}" for name, n in counts.items())
        raise SystemExit(f"LOSS OR DUPLICATES: {found}; {count} sent")
    return tuple(counts)


def empty_tables(engine) -> None:
    """Every run starts from empty tables: TRUNCATE, so no purge of deleted rows runs on."""
    with engine.begin() as conn:
        for table in (models.transactions, *(table for _, table in TOTALS)):
            if inspect(conn).has_table(table.name):
                conn.execute(text(f"TRUNCATE TABLE {table.name}"))


def peak_rss_mb(script: Script) -> float:
    """The process's peak resident set size (VmHWM), read before it exits."""
    for line in Path(f"/proc/{script.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def cpu_s(script: Script) -> float:
    """The CPU seconds (user + system, all threads) the process used, read before it exits."""
    return pid_cpu_s(script.proc.pid)


def pid_cpu_s(pid: int) -> float:
    """The CPU seconds (user + system, all threads) process `pid` has used so far."""
    # After the ")" that ends the command name, fields 14 and 15 of proc(5): utime, stime.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client) -> float:
    """The CPU seconds (user + system, all threads) the Redis server has used so far.

    Server-wide: whatever else uses this Redis during a run is counted too.
    """
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def batch_writes_s(client) -> float:
    """Redis's seconds in the subscribers' one Redis transaction per batch (recent lists,
    dead letters, acks) since the last CONFIG RESETSTAT.

    That transaction is a MULTI/EXEC in older versions (EXEC's time holds its commands'),
    one script call (EVALSHA) since the recent lists; the emitter's scripts run as EVAL.
    """
    stats = client.info("commandstats")
    multi = stats.get("cmdstat_exec", {})
    if multi.get("calls"):
        return multi["usec"] / 1e6
    return stats.get("cmdstat_evalsha", {}).get("usec", 0) / 1e6


def wait_for_rows(engine, count: int, stall: float = 30) -> None:
    """Wait until `count` rows are stored; stop when none came for `stall` s: they are lost.

    Polls MAX(id), one index lookup: COUNT(*) reads a whole index, and polled every few
    ms it took MariaDB's CPU from the run being measured. Auto-increment gaps can only
    make MAX(id) run ahead, so COUNT(*) has the last word.
    """
    top = select(func.coalesce(func.max(models.transactions.c.id), 0))
    last, last_change = -1, time.monotonic()
    while True:
        with engine.connect() as conn:
            newest = conn.scalar(top)
        if newest >= count and stored(engine)["rows"] >= count:
            return
        if newest != last:
            last, last_change = newest, time.monotonic()
        elif time.monotonic() - last_change > stall:
            missing = count - stored(engine)["rows"]
            raise SystemExit(f"LOST: {missing} of {count} never stored ({stall} s idle)")
        time.sleep(0.01)


def script_env(
    tree: Path, database_url: str = DATABASE_URL, redis_url: str = REDIS_URL
) -> dict[str, str]:
    """The environment of the scripts of `tree`: its code, the bench's servers and names."""
    return {
        "PYTHONPATH": str(tree),
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CHANNEL": NAME,
        "STREAM": NAME,
        "KEY_PREFIX": KEY_PREFIX,
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",  # several subscribers on one host: no metrics port for each
    }


def end_to_end(
    engine, client, load: Load, consumers: list[list[str]], env: dict, tree: Path
) -> Run:
    """Send the load in a burst; the tx/s until the consumers stored it all.

    The consumers, and the emitter of the typical workload, are the scripts of `tree` (a
    checkout of the repository), run there with its own code on the path.
    """
    empty_tables(engine)
    client.flushdb()
    env = {**script_env(tree), **env}
    procs = [Script(*args, env=env, cwd=tree) for args in consumers]
    try:
        for proc in procs:
            proc.wait_for_line(r"reading", timeout=60)
        client.config_resetstat()
        redis_before = redis_cpu_s(client)
        started = time.monotonic()
        start_feed(load, env, tree).wait_ok(600)
        wait_for_rows(engine, load.count)
        elapsed = time.monotonic() - started
        redis_used = redis_cpu_s(client) - redis_before
        rss = max(peak_rss_mb(proc) for proc in procs)
        consumers_used = sum(cpu_s(proc) for proc in procs)
        writes = batch_writes_s(client)
    finally:
        for proc in procs:
            proc.stop()
    return Run(load.count / elapsed, rss, redis_used, consumers_used, writes)


def txstream(transport: str, subscribers: int):
    """A measured run of txstream's own subscriber(s); checks exactly once."""

    def run(engine, client, load: Load, tree: Path) -> Run:
        consumers = [["sub_and_store.py"]] * subscribers
        result = end_to_end(engine, client, load, consumers, {"TRANSPORT": transport}, tree)
        result.checked = check_exactly_once(engine, load.count, tree)
        return result

    return run


def naive(engine, client, load: Load, tree: Path) -> Run:
    """The seed's design: one INSERT and one COMMIT per message (bench/naive_subscriber.py)."""
    args = ["bench/naive_subscriber.py", "--redis-url", REDIS_URL, "--database-url", DATABASE_URL]
    args += ["--stream", NAME, "--count", str(load.count)]
    result = end_to_end(engine, client, load, [args], {"TRANSPORT": "stream"}, tree)
    if stored(engine)["rows"] != load.count:
        raise SystemExit(f"naive baseline stored {stored(engine)['rows']} of {load.count}")
    return result


def raw_ceiling(engine, client, load: Load, tree: Path) -> Run:
    """The load's rows, INSERTed straight into MariaDB in batches: no Redis, no other work.

    Runs no script, so `tree` is unused and there is no "before" to measure.
    """
    rows = ceiling_rows(load)
    empty_tables(engine)
    return Run(load.count / insert_batches(engine, rows))


def ceiling_rows(load) -> list[tuple]:
    """The load's transactions as rows of `insert_batches`, made before the clock starts."""
    now = utcnow()
    return [(t.txn_id, t.user_id, t.amount, t.ts, now) for t in load.transactions()]


def insert_batches(
    engine, rows: list[tuple], table: str = "transactions", batch: int = BATCH
) -> float:
    """Seconds to INSERT `rows` into `table` (one of ours), `batch` rows a commit."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.monotonic()
        for i in range(0, len(rows), batch):
            cursor.executemany(
                f"INSERT INTO {table} (txn_id, user_id, amount, ts, received_at) "  # nosec B608
                "VALUES (%s, %s, %s, %s, %s)",
                rows[i : i + batch],
            )
            raw.commit()
        return time.monotonic() - started
    finally:
        raw.close()


MODES = {
    "a": ("(a) naive: INSERT+COMMIT per message", naive),
    "b": ("(b) txstream pub/sub", txstream("pubsub", 1)),
    "c1": ("(c) txstream stream, 1 subscriber", txstream("stream", 1)),
    "c2": ("(c) txstream stream, 2 subscribers", txstream("stream", 2)),
    "d": ("(d) raw ceiling: batched INSERT, no Redis", raw_ceiling),
}


def pubsub_backlog(client, load: Load) -> tuple[int, int]:
    """(messages, bytes) a pub/sub subscriber can fall behind before Redis drops it.

    Its own buffer (PUBSUB_BUFFER messages), then Redis's output buffer for it, up to
    the hard limit of `client-output-buffer-limit pubsub`; a message's size measured
    on the wire, as RESP, from a sample of the emitter's lines.
    """
    limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    parts = limits.split()
    hard = int(parts[parts.index("pubsub") + 1])
    sample = [format_line(tx) for tx in islice(load.transactions(), 1000)]
    # *3 $7 message $N channel $M line: about 40 bytes of framing around the line.
    per_message = statistics.mean(len(line) + len(NAME) + 40 for line in sample)
    return config.Settings.pubsub_buffer + int(hard / per_message), hard


def chart(results: dict[str, list[Run]], title: str) -> None:
    """A bar per mode: median tx/s, every run as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)[::-1]
    medians = [statistics.median(r.rate for r in results[n]) for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.6))
    ax.barh(names, medians, color="#4878a8")
    for y, name in enumerate(names):
        rates = [r.rate for r in results[name]]
        ax.plot(rates, [y] * len(rates), "k.", markersize=4)
        ax.text(max(rates), y, f"  {medians[y]:,.0f}", va="center")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    ax.set_xlabel("transactions per second (bar: median of the runs; dots: each run)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(medians) * 1.18)
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)


def row_name(key: str, label: str) -> str:
    """A mode's name in the table and the chart, with its tree's label if there is one."""
    name = MODES[key][0]
    return f"{name}, {label}" if label else name


def progress(run: Run) -> str:
    """One run's figures, for the progress lines."""
    text = f"{run.rate:,.0f} tx/s"
    if run.redis_cpu_s is not None:
        text += f", Redis CPU {run.redis_cpu_s:.2f} s (batch writes {run.batch_writes_s:.2f} s)"
        text += f", subscriber CPU {run.consumer_cpu_s:.2f} s"
    if run.checked:
        text += f"; exactly once: {', '.join(run.checked)}"
    return text


Results = dict[tuple[str, str, str], list[Run]]  # by (workload, mode, tree label)


def measure(engine, client, args, trees: dict[str, Path]) -> Results:
    """Every run of every mode of every workload, in rounds.

    Each round runs every mode of every workload once, each mode once per tree, in
    turns (before, after): so the machine's noise hits before and after, and each mode
    and its workload's ceiling, alike. (d) runs no script, so it runs once a round,
    labelled "".
    """
    results: Results = {}
    for i in range(args.runs):
        for workload in args.workloads:
            load = Load(workload, args.count, args.users)
            for key in args.modes.split(","):
                run = MODES[key][1]
                for label, tree in ({"": ROOT} if key == "d" else trees).items():
                    result = run(engine, client, load, tree)
                    results.setdefault((workload, key, label), []).append(result)
                    name = f"{workload}: {row_name(key, label)}"
                    print(f"#   {name}, run {i + 1}: {progress(result)}", flush=True)
    return results


def median_of(runs: list[Run] | None, field: str) -> float | None:
    """The median of one figure over the runs that have it; None if none has."""
    values = [getattr(run, field) for run in runs or [] if getattr(run, field) is not None]
    return statistics.median(values) if values else None


def table(results: Results, count: int, before: str | None) -> str:
    """The Markdown table: a row per workload, mode and tree, with the medians of its runs.

    `before` is the baseline's label, if any: each "after" row then shows its ratio to
    the "before" row of its mode, and every row's "x naive" is to the naive mode of its
    own tree (the ceiling's, to the current tree's). "x ceiling" is to the ceiling of
    the row's own workload.
    """

    def rate(workload: str, key: str, label: str) -> float | None:
        return median_of(results.get((workload, key, label)), "rate")

    head = ["workload", "mode", "tx/s (median)", "x naive", "x ceiling", "peak RSS"]
    head += ["Redis CPU s", f"Redis CPU s per {PER:,}", "of it, batch writes"]
    head += ["subscriber CPU s", "runs"]
    if before:
        head.insert(3, "after / before")
    lines = ["| " + " | ".join(head) + " |", "|---|---" + "|---:" * (len(head) - 3) + "|---|"]
    for (workload, key, label), runs in results.items():
        median = rate(workload, key, label)
        naive_rate = rate(workload, "a", label or (AFTER if before else ""))
        ceiling = rate(workload, "d", "")
        redis_cpu = median_of(runs, "redis_cpu_s")
        consumer_cpu = median_of(runs, "consumer_cpu_s")
        writes = median_of(runs, "batch_writes_s")
        rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
        cells = [
            workload,
            row_name(key, label),
            f"{median:,.0f}",
            f"{median / naive_rate:.1f}" if naive_rate else "-",
            f"{median / ceiling:.2f}" if ceiling else "-",
            f"{max(rss):.0f} MB" if rss else "-",
            f"{redis_cpu:.2f}" if redis_cpu is not None else "-",
            f"{redis_cpu * PER / count:.2f}" if redis_cpu is not None else "-",
            f"{writes:.2f}" if writes is not None else "-",
            f"{consumer_cpu:.2f}" if consumer_cpu is not None else "-",
            ", ".join(f"{r.rate:,.0f}" for r in runs),
        ]
        if before:
            earlier = rate(workload, key, before) if label == AFTER else None
            cells.insert(3, f"x{median / earlier:.2f}" if earlier else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine's architecture."""
    return next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.machine(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--modes", default="a,b,c1,c2,d", help="comma-separated, of a b c1 c2 d (default: all)"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=WORKLOADS,
        default=list(WORKLOADS),
        help="typical: the emitter's burst; hard: uniform users, times over the last day "
        "(default: both)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the scripts of this git revision, taking turns with this tree's",
    )
    parser.add_argument("--no-chart", action="store_true", help=f"do not write {CHART}")
    args = parser.parse_args()
    # A plain `kill` cleans up as Ctrl-C does: scripts stopped, worktree removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engine = models.make_engine(DATABASE_URL)
    models.create_schema(engine)
    client = redis.Redis.from_url(REDIS_URL)
    cpu = cpu_model()
    workloads = "; ".join(f"{name}: {WORKLOADS[name].description}" for name in args.workloads)
    title = (
        f"{args.count:,} transactions, {args.users:,} users ({workloads}); "
        f"{datetime.date.today()}, {os.cpu_count()} cores ({cpu})"
    )
    print(f"# {title}; Python {platform.python_version()}, median of {args.runs} runs")
    with checkouts(args.baseline) as trees:
        before = next(iter(trees)) if args.baseline else None  # the baseline comes first
        results = measure(engine, client, args, trees)
    print()
    print(table(results, args.count, before))
    current = AFTER if before else ""
    for workload in args.workloads:
        if (workload, "b", current) not in results:
            continue
        messages, limit = pubsub_backlog(client, Load(workload, args.count, args.users))
        print(
            f"\npub/sub, {workload} workload: the subscriber keeps up with "
            f"{median_of(results[(workload, 'b', current)], 'rate'):,.0f} tx/s sustained. "
            f"Faster, its backlog grows; loss begins when the backlog passes about "
            f"{messages:,} messages (PUBSUB_BUFFER plus Redis's {limit // 2**20} MB "
            f"output-buffer limit for it)."
        )
    if not args.no_chart:
        names = {(w, key, label): f"{w}: {row_name(key, label)}" for w, key, label in results}
        chart({names[key]: runs for key, runs in results.items()}, title)
        print(f"\nchart: {CHART.relative_to(ROOT)}")
    engine.dispose()


if __name__ == "__main__":
    main()
