"""End-to-end ingest throughput: emitter burst -> Redis -> consumer(s) -> MariaDB.

For each mode, the time from the emitter's start to the last row committed, on the real
Redis and MariaDB: (a) the seed's naive design, one INSERT+COMMIT per message
(bench/naive_subscriber.py); (b) txstream over pub/sub; (c) txstream over the stream with
1 and 2 subscribers, each run checked for exactly once (rows and window totals); and (d)
the raw ceiling: the same rows INSERTed straight into MariaDB in batches, nothing else.
Also each subscriber's peak RSS, and for pub/sub how much backlog it absorbs before loss.
Writes the table (Markdown) to stdout and a chart to docs/ingest.png.

    .venv/bin/python bench/ingest.py                       # 200,000 tx, 10,000 users, 3 runs
    .venv/bin/python bench/ingest.py --count 1000000 --modes c1 --runs 1   # RSS at 1M

Uses the database `txstream_bench` and Redis db 14 (emptied first); override with
BENCH_DATABASE_URL / BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
import models  # noqa: E402
from emitter_and_pub import FakeTransactions  # noqa: E402
from txstream.processes import Script  # noqa: E402
from txstream.wire import format_line, utcnow  # noqa: E402

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SEED = 1
BATCH = config.Settings.batch_size  # rows per transaction of the raw ceiling, as the subscriber
CHART = ROOT / "docs" / "ingest.png"


@dataclass
class Run:
    rate: float  # transactions per second, end to end
    peak_rss_mb: float | None = None  # the largest consumer's peak resident memory


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


def peak_rss_mb(script: Script) -> float:
    """The process's peak resident set size (VmHWM), read before it exits."""
    for line in Path(f"/proc/{script.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


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
        if newest >= count and stored(engine)[0] >= count:
            return
        if newest != last:
            last, last_change = newest, time.monotonic()
        elif time.monotonic() - last_change > stall:
            missing = count - stored(engine)[0]
            raise SystemExit(f"LOST: {missing} of {count} never stored ({stall} s idle)")
        time.sleep(0.01)


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
        wait_for_rows(engine, count)
        elapsed = time.monotonic() - started
        rss = max(peak_rss_mb(proc) for proc in procs)
    finally:
        for proc in procs:
            proc.stop()
    return Run(count / elapsed, rss)


def txstream(transport: str, subscribers: int):
    """A measured run of txstream's own subscriber(s); checks exactly once."""

    def run(engine, client, count: int, users: int) -> Run:
        result = end_to_end(
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
        return result

    return run


def naive(engine, client, count: int, users: int) -> Run:
    """The seed's design: one INSERT and one COMMIT per message (bench/naive_subscriber.py)."""
    args = ["bench/naive_subscriber.py", "--redis-url", REDIS_URL, "--database-url", DATABASE_URL]
    args += ["--stream", "bench", "--count", str(count)]
    result = end_to_end(engine, client, count, users, [args], {"TRANSPORT": "stream"})
    if stored(engine)[0] != count:
        raise SystemExit(f"naive baseline stored {stored(engine)[0]} of {count}")
    return result


def raw_ceiling(engine, client, count: int, users: int) -> Run:
    """The same rows, INSERTed straight into MariaDB in batches: no Redis, no other work."""
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
    return Run(count / elapsed)


MODES = {
    "a": ("(a) naive: INSERT+COMMIT per message", naive),
    "b": ("(b) txstream pub/sub", txstream("pubsub", 1)),
    "c1": ("(c) txstream stream, 1 subscriber", txstream("stream", 1)),
    "c2": ("(c) txstream stream, 2 subscribers", txstream("stream", 2)),
    "d": ("(d) raw ceiling: batched INSERT, no Redis", raw_ceiling),
}


def pubsub_backlog(client, users: int) -> tuple[int, int]:
    """(messages, bytes) a pub/sub subscriber can fall behind before Redis drops it.

    Its own buffer (PUBSUB_BUFFER messages), then Redis's output buffer for it, up to
    the hard limit of `client-output-buffer-limit pubsub`; a message's size measured
    on the wire, as RESP, from a sample of the emitter's lines.
    """
    limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    parts = limits.split()
    hard = int(parts[parts.index("pubsub") + 1])
    source = FakeTransactions(users, random.Random(SEED))
    sample = [format_line(source.next()) for _ in range(1000)]
    # *3 $7 message $N channel $M line: about 40 bytes of framing around the line.
    per_message = statistics.mean(len(line) + len("bench") + 40 for line in sample)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--modes", default="a,b,c1,c2,d", help="comma-separated, of a b c1 c2 d (default: all)"
    )
    parser.add_argument("--no-chart", action="store_true", help=f"do not write {CHART}")
    args = parser.parse_args()
    modes = args.modes.split(",")
    engine = models.make_engine(DATABASE_URL)
    models.create_schema(engine)
    client = redis.Redis.from_url(REDIS_URL)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.machine(),
    )
    title = (
        f"{args.count:,} transactions, {args.users:,} users; {datetime.date.today()}, "
        f"{os.cpu_count()} cores ({cpu})"
    )
    print(f"# {title}; Python {platform.python_version()}, median of {args.runs} runs")
    results: dict[str, list[Run]] = {}
    for key in modes:
        name, run = MODES[key]
        results[name] = []
        for i in range(args.runs):
            results[name].append(run(engine, client, args.count, args.users))
            print(f"#   {name}, run {i + 1}: {results[name][-1].rate:,.0f} tx/s", flush=True)

    def median_of(key: str) -> float | None:
        name = MODES[key][0]
        return statistics.median(r.rate for r in results[name]) if name in results else None

    naive_rate, ceiling = median_of("a"), median_of("d")
    print("\n| mode | tx/s (median) | x naive | % of ceiling | peak RSS | runs |")
    print("|---|---:|---:|---:|---:|---|")
    for name, runs in results.items():
        median = statistics.median(r.rate for r in runs)
        ratio = f"{median / naive_rate:.1f}" if naive_rate else "-"
        share = f"{100 * median / ceiling:.0f}%" if ceiling else "-"
        rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
        rss_text = f"{max(rss):.0f} MB" if rss else "-"
        rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
        print(f"| {name} | {median:,.0f} | {ratio} | {share} | {rss_text} | {rates} |")
    if "b" in modes:
        messages, hard = pubsub_backlog(client, args.users)
        print(
            f"\npub/sub: the subscriber keeps up with {median_of('b'):,.0f} tx/s sustained. "
            f"Faster, its backlog grows; loss begins when the backlog passes about "
            f"{messages:,} messages (PUBSUB_BUFFER plus Redis's {hard // 2**20} MB "
            f"output-buffer limit for it)."
        )
    if not args.no_chart:
        chart(results, title)
        print(f"\nchart: {CHART.relative_to(ROOT)}")
    engine.dispose()


if __name__ == "__main__":
    main()
