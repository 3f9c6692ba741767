"""Redis Cluster (issue #12): ingest against partitions and subscribers, what WAIT costs,
and what a failover costs. One command: `make bench-cluster`.

Starts a Redis Cluster of its own, 3 masters with a replica each (PrivateRedisCluster of
txstream.testing, in a temporary directory, on free loopback ports, append-only files
fsynced every second), and for the baseline one plain redis-server alike (PrivateRedis,
`appendfsync everysec`: Redis's default, as the cluster's nodes). The shared MariaDB, in
a database of its own, `txstream_bench_cluster` (or BENCH_CLUSTER_DATABASE_URL), created
at the start and dropped at the end. The real scripts, `emitter_and_pub.py` and
`sub_and_store.py`, TRANSPORT=stream, otherwise their default settings.

(a) Ingest. N subscribers start and wait; then the emitter sends `--count` transactions
    of 10,000 users in a burst (`--rate 0`). Throughput = count / (emitter started ->
    last row committed), as bench/ingest.py measures it; also count / (first row seen ->
    last row). Each run ends with the check that every transaction was stored exactly
    once: the rows are the emitted txn_ids, each once, and the window and bucket totals
    count each once. Also the CPU each part used during the run (/proc/PID/stat; the
    machine's busy time from /proc/stat), in cores: what limits the rate.
(b) WAIT. The emitter alone (no subscriber), 3 partitions, `--rate 0`, `--count`
    transactions, MIN_REPLICAS=0 and 1 (REPLICA_WAIT_MS default) taking turns: the
    published tx/s the emitter prints, its own CPU and the cluster's.
(c) Failover. 3 partitions, 3 subscribers, the emitter at `--rate` tx/s. After a warm-up,
    SIGKILL the master of partition 0's stream; wait until its replica serves its slots
    (the failover time); start the killed node again (as an orchestrator would: at once,
    and `--delay` s later) and wait until it is back as a replica. A sampler counts the
    stored transactions of each partition every 50 ms in MariaDB: the longest time each
    went without a new row (its gap), from the kill to the last row. MIN_REPLICAS=1 and
    0; and once with `cluster-require-full-coverage no` (Redis's default is yes: while a
    master is down and not yet replaced, every node refuses every command). Each run is
    checked for loss and duplicates at the end.

Prints a Markdown table per part, every run listed with the medians. Rounds alternate the
configurations (so the noise of this shared machine hits them alike).

    .venv/bin/python bench/cluster.py       # all three (5, 8 and 3 runs): about 30 min
    .venv/bin/python bench/cluster.py --parts ingest --quick    # the 6 setups the issue needs
    .venv/bin/python bench/cluster.py --parts failover --failover-runs 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import empty_tables, pid_cpu_s, stored  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from txstream.processes import Script, wait_until  # noqa: E402
from txstream.testing import (  # noqa: E402
    PrivateRedis,
    PrivateRedisCluster,
    emitted,
    emitter_args,
    last_progress,
    wait_for_log,
)

DATABASE_URL = os.environ.get(
    "BENCH_CLUSTER_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_cluster"
)
USERS = 10_000
SEED = 1
NAME = "benchcluster"  # the stream
KEY_PREFIX = "benchcluster:"
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05  # the failover sampler's interval
STALLED_S = 1.0  # a partition that stores nothing this long is stalled (5x the normal gap)
WARM_UP_S = 8  # failover runs: steady ingest this long before the kill
AFTER_S = 12  # ... and the emitter still sends this long after the node is back
STALL_S = 60  # no new row for this long: the rest is lost (beyond CLAIM_IDLE_MS, 30 s)
PUBLISHED = re.compile(r"published (\d+) transactions in [\d.]+ s \((\d+) tx/s\)")


# --- The servers -------------------------------------------------------------------------


@dataclass
class Servers:
    """The private Redis Cluster and plain Redis, and the bench database's engine."""

    cluster: PrivateRedisCluster
    single: PrivateRedis
    engine: object
    mariadb_pid: int | None

    def redis_pids(self, on_cluster: bool) -> list[int]:
        nodes = self.cluster.nodes if on_cluster else [self.single]
        return [node.proc.pid for node in nodes if node.running]

    def reset(self, on_cluster: bool) -> None:
        """Empty tables, and an empty Redis: every run starts from nothing."""
        empty_tables(self.engine)
        for node in self.cluster.masters() if on_cluster else [self.single]:
            with node.client() as client:
                client.flushall()


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """Start the cluster and the plain Redis in a temporary directory, create the bench
    database; stop and drop them all on the way out."""
    engine = models.make_engine(DATABASE_URL)
    models.create_schema(engine)
    try:
        with tempfile.TemporaryDirectory(prefix="txstream-bench-cluster-") as tmp:
            single = PrivateRedis(Path(tmp) / "single", appendfsync="everysec")
            single.start()
            try:
                with PrivateRedisCluster(Path(tmp) / "cluster") as cluster:
                    yield Servers(cluster, single, engine, mariadb_pid(engine))
            finally:
                single.stop()
    finally:
        url = make_url(DATABASE_URL)
        name = engine.dialect.identifier_preparer.quote(url.database)
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()


def mariadb_pid(engine) -> int | None:
    """The MariaDB server's process id, from its pid file (None: not on this machine)."""
    with engine.connect() as conn:
        pid_file = conn.scalar(text("SELECT @@pid_file"))
    try:
        pid = int(Path(pid_file).read_text())
        pid_cpu_s(pid)
    except (OSError, ValueError):
        return None
    return pid


def script_env(url: str, partitions: int, min_replicas: str | None = None) -> dict:
    """The scripts' environment: the stream on `url`, default settings but for these."""
    env = {
        "REDIS_URL": url,
        "DATABASE_URL": DATABASE_URL,
        "TRANSPORT": "stream",
        "STREAM": NAME,
        "KEY_PREFIX": KEY_PREFIX,
        "STREAM_PARTITIONS": str(partitions),
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",  # several subscribers on one host: no metrics port for each
    }
    if min_replicas is not None:
        env["MIN_REPLICAS"] = min_replicas
    return env


@contextlib.contextmanager
def subscribers(n: int, env: dict) -> Iterator[list[Script]]:
    """`n` subscribers, once each reads; stopped on the way out (killed on a failure)."""
    scripts = []
    try:
        scripts = [Script("sub_and_store.py", env=env) for _ in range(n)]
        for script in scripts:
            wait_for_log(script, r"waiting for transactions", timeout=60)
        yield scripts
        for script in scripts:
            if script.stop() != 0:
                raise SystemExit(f"a subscriber failed:\n{script.output}")
    finally:
        for script in scripts:
            script.kill()


# --- What a run used, and what it stored ----------------------------------------------------


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    """This harness's own CPU seconds (its sampler and pollers)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent on work since boot (/proc/stat: user,
    nice, system, irq, softirq; not idle, iowait nor steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / TICK


class CpuMeter:
    """CPU seconds of groups of processes, this harness and the whole machine, from a start.

    The emitter is counted when it has been waited for (`emitter_exited`): as a child that
    exited, the only one of a run (the others outlive the meter).
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = self._read()
        self.children = children_cpu_s()
        self.emitter = 0.0

    def _read(self) -> dict[str, float]:
        spent = {name: sum(map(pid_cpu_s, pids)) for name, pids in self.groups.items()}
        return {**spent, "harness": own_cpu_s(), "machine": machine_busy_s()}

    def emitter_exited(self) -> None:
        self.emitter = children_cpu_s() - self.children

    def cores(self, wall_s: float) -> dict[str, float]:
        """The cores each used on average since the start: groups, emitter, harness, and
        `others` (the machine's busy time that none of them used: other sessions)."""
        now = self._read()
        used = {name: now[name] - self.start[name] for name in now}
        used["emitter"] = self.emitter
        machine = used.pop("machine")
        used["others"] = machine - sum(used.values())
        used["busy"] = machine
        return {name: seconds / wall_s for name, seconds in used.items()}


def check_stored(engine, count: int, allow_loss: bool = False) -> int:
    """How many of the emitter's `count` transactions are missing from the database.

    Fails on anything stored that the emitter did not send or stored twice, or on window
    or bucket totals that count other than the rows; and on any loss unless `allow_loss`.
    """
    counts = stored(engine)
    if len(set(counts.values())) != 1:
        raise SystemExit(f"TOTALS DISAGREE WITH ROWS: {counts}")
    with engine.connect() as conn:
        ids = conn.scalars(select(models.transactions.c.txn_id)).all()
    sent = {tx.txn_id for tx in emitted(count, USERS, SEED)}
    if len(set(ids)) != len(ids) or not set(ids) <= sent:
        raise SystemExit(f"DUPLICATES OR STRANGERS: {len(ids)} rows, {len(set(ids))} txn_ids")
    lost = count - len(ids)
    if lost and not allow_loss:
        raise SystemExit(f"LOST: {lost} of {count}")
    return lost


def watch_rows(engine, count: int, emitter: Script, meter: CpuMeter) -> float:
    """Wait until the emitter has exited 0 and `count` rows are stored; when the first row
    was seen (monotonic). Polls MAX(id), one index lookup (bench/ingest.py: COUNT(*) polled
    took MariaDB's CPU from the run); COUNT(*) has the last word."""
    top = select(func.coalesce(func.max(models.transactions.c.id), 0))
    first = None
    last, last_change = -1, time.monotonic()
    while True:
        with engine.connect() as conn:
            newest = conn.scalar(top)
        now = time.monotonic()
        if newest and first is None:
            first = now
        if emitter.proc.returncode is None and emitter.proc.poll() is not None:
            if emitter.proc.returncode != 0:
                raise SystemExit(f"the emitter failed:\n{emitter.output}")
            meter.emitter_exited()
        if emitter.proc.returncode == 0 and newest >= count and stored(engine)["rows"] >= count:
            return first
        if newest != last:
            last, last_change = newest, now
        elif now - last_change > STALL_S:
            raise SystemExit(f"LOST: only {stored(engine)['rows']} of {count} stored")
        time.sleep(0.01)


def emitter_rate(emitter: Script) -> float:
    """The emitter's own tx/s, from its last line."""
    match = PUBLISHED.search(emitter.output)
    if match is None:
        raise SystemExit(f"no 'published' line from the emitter:\n{emitter.output}")
    return float(match[2])


# --- (a) Ingest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One ingest configuration."""

    partitions: int
    subscribers: int
    on_cluster: bool = True
    min_replicas: str | None = None  # None: the default, 1 on a cluster, 0 on one server

    @property
    def label(self) -> tuple[str, str, str, str]:
        redis = "cluster 3+3" if self.on_cluster else "one server"
        replicas = self.min_replicas or ("1" if self.on_cluster else "0")
        return redis, str(self.partitions), str(self.subscribers), replicas


@dataclass
class IngestRun:
    rate: float  # stored tx/s, emitter started -> last row
    steady: float  # stored tx/s, first row seen -> last row
    emitter: float  # the emitter's own published tx/s
    cores: dict[str, float]  # CPU used on average during the run, in cores, by part


# The minimum: partitions 1/3/6 with 3 subscribers, subscribers 1/2/3 with 3
# partitions; the baseline on one plain server; the same without WAIT.
QUICK = [
    Setup(1, 3),
    Setup(3, 3),
    Setup(6, 3),
    Setup(3, 1),
    Setup(3, 2),
    Setup(1, 3, on_cluster=False),
    Setup(3, 3, min_replicas="0"),
]
ALL = QUICK + [Setup(p, s) for p in (1, 6) for s in (1, 2)]


def ingest_run(bench: Servers, setup: Setup, count: int) -> IngestRun:
    """One burst of `count` through the emitter and the setup's subscribers."""
    bench.reset(setup.on_cluster)
    url = bench.cluster.url if setup.on_cluster else bench.single.url
    env = script_env(url, setup.partitions, setup.min_replicas)
    with subscribers(setup.subscribers, env) as subs:
        groups = {
            "subscribers": [s.proc.pid for s in subs],
            "Redis": bench.redis_pids(setup.on_cluster),
            "MariaDB": [bench.mariadb_pid] if bench.mariadb_pid else [],
        }
        meter = CpuMeter(groups)
        started = time.monotonic()
        emitter = Script(*emitter_args(count, USERS, SEED, rate=0), env=env)
        try:
            first = watch_rows(bench.engine, count, emitter, meter)
        finally:
            emitter.kill()
        ended = time.monotonic()
        cores = meter.cores(ended - started)
    check_stored(bench.engine, count)
    return IngestRun(
        count / (ended - started), count / (ended - first), emitter_rate(emitter), cores
    )


PARTS = ("subscribers", "MariaDB", "Redis", "emitter")  # the system's own processes
PER = 100_000  # CPU seconds are shown per this many transactions stored


def cpu_per(run: IngestRun, part: str) -> float:
    """CPU seconds `part` used per PER transactions stored in the run."""
    return run.cores[part] * PER / run.rate


def alone(run: IngestRun) -> float:
    """The tx/s the run's CPU per transaction would allow if the system's processes had
    every core of the machine to themselves: cores / (their CPU seconds per transaction)."""
    return (os.cpu_count() or 1) * run.rate / sum(run.cores[part] for part in PARTS)


def ingest_table(results: dict[Setup, list[IngestRun]]) -> str:
    head = ["Redis", "partitions", "subscribers", "MIN_REPLICAS", "tx/s (median)", "runs"]
    head += ["first -> last row tx/s", "emitter tx/s"]
    head += [f"CPU s per {PER:,}: {part}" for part in PARTS]
    head += ["CPU s: all four", "tx/s with the cores to themselves"]
    head += ["cores used by others", "cores busy"]
    rows = []
    for setup, runs in results.items():
        cells = [*setup.label, f"**{median(r.rate for r in runs):,.0f}**"]
        cells.append(", ".join(f"{r.rate:,.0f}" for r in runs))
        cells.append(f"{median(r.steady for r in runs):,.0f}")
        cells.append(f"{median(r.emitter for r in runs):,.0f}")
        cells += [f"{median(cpu_per(r, part) for r in runs):.2f}" for part in PARTS]
        cells.append(f"{median(sum(cpu_per(r, part) for part in PARTS) for r in runs):.2f}")
        cells.append(f"{median(alone(r) for r in runs):,.0f}")
        cells += [f"{median(r.cores[part] for r in runs):.2f}" for part in ("others", "busy")]
        rows.append(cells)
    return markdown(head, rows)


# --- (b) WAIT -------------------------------------------------------------------------------


@dataclass
class EmitterRun:
    rate: float  # the emitter's own published tx/s
    emitter_cpu_s: float
    redis_cpu_s: float  # the six nodes'


def wait_run(bench: Servers, min_replicas: str, count: int) -> EmitterRun:
    """The emitter alone, 3 partitions, a burst of `count`, with MIN_REPLICAS."""
    bench.reset(on_cluster=True)
    meter = CpuMeter({"Redis": bench.redis_pids(True)})
    env = script_env(bench.cluster.url, 3, min_replicas)
    emitter = Script(*emitter_args(count, USERS, SEED, rate=0), env=env)
    emitter.wait_ok(600)
    meter.emitter_exited()
    cores = meter.cores(1.0)  # wall 1 s: CPU seconds
    return EmitterRun(emitter_rate(emitter), cores["emitter"], cores["Redis"])


def wait_table(results: dict[str, list[EmitterRun]]) -> str:
    head = ["MIN_REPLICAS", "emitter tx/s (median)", "runs", "emitter CPU s", "Redis CPU s"]
    rows = [
        [
            replicas,
            f"**{median(r.rate for r in runs):,.0f}**",
            ", ".join(f"{r.rate:,.0f}" for r in runs),
            f"{median(r.emitter_cpu_s for r in runs):.2f}",
            f"{median(r.redis_cpu_s for r in runs):.2f}",
        ]
        for replicas, runs in results.items()
    ]
    return markdown(head, rows)


# --- (c) Failover ---------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Counts the stored transactions of each partition every SAMPLE_S seconds.

    From user_window_totals, which the subscriber updates in the database transaction
    that inserts the rows, so it counts exactly the committed rows; a few thousand rows
    (one per user and window) to add up instead of every transaction.
    """

    def __init__(self, engine, partitions: int) -> None:
        super().__init__(name="sampler", daemon=True)
        self.engine = engine
        self.partitions = partitions
        self.samples: list[tuple[float, list[int]]] = []  # (monotonic, count by partition)
        self.stopping = threading.Event()
        w = models.user_window_totals
        part = (w.c.user_id % partitions).label("part")
        self.query = select(part, func.sum(w.c.tx_count)).group_by(part)

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.engine.connect() as conn:
                rows = dict(conn.execute(self.query).all())
            counts = [int(rows.get(p, 0)) for p in range(self.partitions)]
            self.samples.append((time.monotonic(), counts))
            self.stopping.wait(SAMPLE_S)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def growths(self, p: int) -> list[float]:
        """When partition `p`'s count was seen to grow."""
        pairs = zip(self.samples, self.samples[1:], strict=False)
        return [t for (_, before), (t, now) in pairs if now[p] > before[p]]

    def gaps(self, p: int, start: float, end: float) -> list[float]:
        """The times between two growths of partition `p` that overlap [start, end]: how
        long it went without a new row, each time."""
        times = self.growths(p)
        return [b - a for a, b in zip(times, times[1:], strict=False) if b > start and a < end]


@dataclass(frozen=True)
class Fault:
    """One failover scenario: MIN_REPLICAS, how long after the failover the killed node is
    started again, and the nodes' `cluster-require-full-coverage` (Redis's default, yes:
    while a master is down and not yet replaced, every node refuses every command)."""

    min_replicas: str
    delay: float
    full_coverage: bool = True

    @property
    def label(self) -> tuple[str, str, str]:
        restart = f"{self.delay:g} s after the failover" if self.delay else "at once"
        return self.min_replicas, restart, "yes" if self.full_coverage else "no"


@dataclass
class FailoverRun:
    failover_s: float  # SIGKILL -> the replica serves every slot of the killed master
    back_s: float  # SIGKILL -> the killed node is a synced replica again (wait_healthy)
    gap: list[float]  # by partition: the longest time without a new row, kill -> last row
    stalled: float  # partition 0: the time in its gaps over STALLED_S, kill -> last row
    before: float  # the longest gap of any partition in the warm-up: the normal
    held: bool  # whether the emitter held partition 0 (logged HOLDING)
    # The outages the scripts themselves logged ("... is back after N s"), the longest:
    emitter_back: float  # the emitter's, of partition 0
    readers_back: list[float]  # the subscribers', reading each partition
    lost: int
    duplicates: int  # redelivered entries the subscribers found stored already


def failover_run(bench: Servers, fault: Fault, rate: int) -> FailoverRun:
    """Kill the master of partition 0 while the emitter sends at `rate` tx/s, and start it
    again after `fault.delay` s; what partition 0 and the others went through."""
    cluster = bench.cluster
    cluster.wait_healthy()
    bench.reset(on_cluster=True)
    env = script_env(cluster.url, 3, fault.min_replicas)
    keys = config.load({**env, "REDIS_CLUSTER": "1"}).keys
    # Long enough to send through the warm-up, failover, delay and return, and after.
    count = int(rate * (WARM_UP_S + 5 + fault.delay + 5 + AFTER_S))
    sampler = Sampler(bench.engine, 3)
    require_full_coverage(cluster, fault.full_coverage)
    with subscribers(3, env) as subs:
        sampler.start()
        emitter = Script(*emitter_args(count, USERS, SEED, rate=rate), env=env)
        try:
            wait_until(lambda: stored(bench.engine)["rows"] >= rate * WARM_UP_S, 60, "the warm-up")
            victim = cluster.node_for_key(keys.stream_of(0))
            killed = time.monotonic()
            cluster.kill(victim)
            cluster.wait_for_failover(victim)
            failover_s = time.monotonic() - killed
            time.sleep(fault.delay)  # the orchestrator's delay: the scenario, not a wait
            cluster.restart(victim)
            require_full_coverage(cluster, fault.full_coverage)
            cluster.wait_healthy()
            back_s = time.monotonic() - killed
            emitter.wait_ok(count / rate + 120)
            if f"published {count} transactions" not in emitter.output:
                raise SystemExit(f"the emitter did not send everything:\n{emitter.output}")
            lost = wait_stored(bench, count, keys, allow_loss=fault.min_replicas == "0")
            done = sampler.samples[-1][0]
        finally:
            emitter.kill()
            sampler.stop()
    duplicates = sum(last_progress(s, "duplicates") for s in subs)
    first = min(sampler.growths(p)[0] for p in range(3))
    return FailoverRun(
        failover_s=failover_s,
        back_s=back_s,
        gap=[max(sampler.gaps(p, killed, done), default=0.0) for p in range(3)],
        stalled=sum(g for g in sampler.gaps(0, killed, done) if g > STALLED_S),
        before=max(max(sampler.gaps(p, first, killed - 1), default=0.0) for p in range(3)),
        held="HOLDING partition 0" in emitter.output,
        emitter_back=longest_outage(emitter.output, "partition 0"),
        readers_back=[
            longest_outage("\n".join(s.output for s in subs), stream) for stream in keys.streams
        ],
        lost=lost,
        duplicates=duplicates,
    )


def longest_outage(output: str, what: str) -> float:
    """The longest outage of `what` a script logged (txstream.runtime.Outage); 0 if none."""
    pattern = rf"redis \({re.escape(what)}\) is back after ([\d.]+) s"
    return max(map(float, re.findall(pattern, output)), default=0.0)


def require_full_coverage(cluster: PrivateRedisCluster, on: bool) -> None:
    """Set `cluster-require-full-coverage` on every running node (a restarted node starts
    with Redis's default, yes)."""
    for node in cluster.nodes:
        if node.running:
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "yes" if on else "no")


def wait_stored(bench: Servers, count: int, keys, allow_loss: bool) -> int:
    """Wait until every transaction is stored, or (`allow_loss`) until the subscribers have
    read and acknowledged everything left in the streams; how many are missing."""

    def drained() -> bool:
        if stored(bench.engine)["rows"] >= count:
            return True
        if not allow_loss:
            return False
        with bench.cluster.client() as client:
            return all(
                client.xpending(stream, config.Settings.group)["pending"] == 0
                and not client.xinfo_groups(stream)[0]["lag"]
                for stream in keys.streams
            )

    wait_until(drained, STALL_S * 2, f"{count} rows stored, or the streams drained")
    return check_stored(bench.engine, count, allow_loss)


def failover_table(results: dict[Fault, list[FailoverRun]]) -> str:
    head = ["MIN_REPLICAS", "killed node restarted", "full coverage", "failover s"]
    head += ["partition 0: longest gap s", f"partition 0: time in gaps > {STALLED_S:g} s"]
    head += ["partitions 1, 2: longest gap s", "longest gap before the kill s"]
    head += ["emitter: partition 0 back after s", "subscribers: partition 0 back after s"]
    head += ["subscribers: partitions 1, 2 back after s"]
    head += ["kill -> node back s", "held", "lost", "stored again (duplicates)"]
    rows = []
    for fault, runs in results.items():

        def each(values: Callable[[FailoverRun], float], runs=runs) -> str:
            numbers = [values(r) for r in runs]
            listed = ", ".join(f"{v:.1f}" for v in numbers)
            return f"{median(numbers):.1f} ({listed})"

        rows.append(
            [
                *fault.label,
                each(lambda r: r.failover_s),
                each(lambda r: r.gap[0]),
                each(lambda r: r.stalled),
                each(lambda r: max(r.gap[1:])),
                each(lambda r: r.before),
                each(lambda r: r.emitter_back),
                each(lambda r: r.readers_back[0]),
                each(lambda r: max(r.readers_back[1:])),
                each(lambda r: r.back_s),
                ", ".join("yes" if r.held else "no" for r in runs),
                ", ".join(str(r.lost) for r in runs),
                ", ".join(str(r.duplicates) for r in runs),
            ]
        )
    return markdown(head, rows)


# --- Running it all -------------------------------------------------------------------------


def median(values) -> float:
    return statistics.median(list(values))


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def rounds(configurations: list, runs: int, measure: Callable, describe: Callable) -> dict:
    """Every configuration once a round, `runs` rounds: {configuration: [result, ...]}."""
    results: dict = {}
    for i in range(runs):
        for configuration in configurations:
            result = measure(configuration)
            results.setdefault(configuration, []).append(result)
            print(f"#   {describe(configuration, result)}, run {i + 1}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ingest,wait,failover", help="of these, comma-separated")
    parser.add_argument("--count", type=int, default=100_000, help="transactions per run (a, b)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each ingest setup")
    parser.add_argument("--quick", action="store_true", help="only the setups the issue needs")
    parser.add_argument("--wait-runs", type=int, default=8, help="runs of each MIN_REPLICAS")
    parser.add_argument("--failover-runs", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--rate", type=int, default=3000, help="the emitter's tx/s (failover)")
    parser.add_argument("--delay", type=float, default=10, help="s before the delayed restart")
    args = parser.parse_args()
    parts = args.parts.split(",")
    # A plain `kill` cleans up as Ctrl-C does: scripts and servers stopped, database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.machine(),
    )
    print(
        f"# {datetime.date.today()}, {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}; {USERS:,} users; the cluster: 3 masters, 3 replicas"
    )
    tables = []
    with servers() as bench:
        if "ingest" in parts:
            results = rounds(
                QUICK if args.quick else ALL,
                args.runs,
                lambda setup: ingest_run(bench, setup, args.count),
                lambda setup, r: (
                    f"ingest {'/'.join(setup.label)}: {r.rate:,.0f} tx/s, "
                    + ", ".join(f"{k} {v:.2f}" for k, v in r.cores.items())
                ),
            )
            tables.append((f"(a) ingest, {args.count:,} transactions a run", ingest_table(results)))
        if "wait" in parts:
            results = rounds(
                ["0", "1"],
                args.wait_runs,
                lambda replicas: wait_run(bench, replicas, args.count),
                lambda replicas, r: f"emitter alone, MIN_REPLICAS={replicas}: {r.rate:,.0f} tx/s",
            )
            title = f"(b) WAIT: the emitter alone, 3 partitions, {args.count:,} transactions"
            tables.append((title, wait_table(results)))
        if "failover" in parts:
            faults = [Fault(r, d) for r in ("1", "0") for d in (0, args.delay)]
            faults.append(Fault("1", 0, full_coverage=False))
            results = rounds(
                faults,
                args.failover_runs,
                lambda fault: failover_run(bench, fault, args.rate),
                lambda fault, r: (
                    f"failover {'/'.join(fault.label)}: failover "
                    f"{r.failover_s:.1f} s, gaps {', '.join(f'{g:.1f}' for g in r.gap)} s, "
                    f"held {r.held}, lost {r.lost}, duplicates {r.duplicates}"
                ),
            )
            title = f"(c) failover of partition 0's master, the emitter at {args.rate:,} tx/s"
            tables.append((title, failover_table(results)))
    for title, table in tables:
        print(f"\n{title}\n\n{table}")


if __name__ == "__main__":
    main()
