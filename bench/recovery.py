"""Recovery times of the stream transport after the faults of issue 3.

Three scenarios, each on a private Redis (append-only file, fsync always) that this script
starts on a free port, and each ending with an exactly-once check (rows == transactions sent,
window totals count == rows, same txn_ids and per-user sums, nothing pending, no dead letters):

- kill -9 of one of two subscribers mid-run (CLAIM_IDLE_MS=1000): the survivor must take over
  the victim's unacknowledged entries;
- a restart of the private Redis mid-run, down for about 2 s;
- the private MariaDB stopped for about 10 s mid-run.

    .venv/bin/python bench/recovery.py             # 3 runs of each; one round took 35 s
    .venv/bin/python bench/recovery.py --runs 5

The shared servers are never stopped. The kill and Redis scenarios store into the shared
MariaDB, database `txstream_bench_recovery` (emptied first; override with
BENCH_RECOVERY_DATABASE_URL); the MariaDB scenario uses a private MariaDB of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import Script, wait_until  # noqa: E402
from txstream.testing import (  # noqa: E402
    CATCH_UP,
    PrivateMariaDB,
    PrivateRedis,
    assert_stored_exactly,
    count_rows,
    emitted,
    emitter_args,
    empty_tables,
    last_progress,
    pending,
    stream_env,
    wait_for_log,
    wait_until_stored,
)

DATABASE_URL = os.environ.get(
    "BENCH_RECOVERY_DATABASE_URL",
    "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_recovery",
)
KEY_PREFIX = "bench-recovery:"
USERS = 500
SEED = 3
RATE = 2000  # transactions per second from the emitter
KILL_COUNT, KILL_AT = 5000, 4000  # sent; stored when the victim is killed
REDIS_COUNT, REDIS_AT, REDIS_DOWN = 8000, 2000, 2.0  # sent; stored at the stop; seconds down
DB_COUNT, DB_AT, DB_DOWN = 10_000, 2000, 10.0
CLAIM_IDLE_MS = 1000  # in the kill scenario; the default is 30,000

# key: (scenario, what exactly is measured); the scenarios' results use these keys.
ROWS = {
    "kill_stored": (
        f"kill -9 of 1 of 2 subscribers, CLAIM_IDLE_MS={CLAIM_IDLE_MS}: all stored",
        f"from the SIGKILL until all {KILL_COUNT:,} rows are in MariaDB and the group has 0 "
        f"pending entries. The kill comes once {KILL_AT:,} are stored, when the victim is "
        "caught (SIGSTOP, a few ms) holding unacknowledged entries. The entries must be "
        "CLAIM_IDLE_MS idle before XAUTOCLAIM takes them, so "
        "with the default CLAIM_IDLE_MS=30000 this is bounded below by about 30 s and above "
        "by 30 s + a 1 s claim-scan pause + one batch (from the code; not run here)",
    ),
    "kill_took_over": (
        "kill -9: the survivor takes over",
        "from the SIGKILL until the survivor logs its first `took over N entries` line",
    ),
    "redis_next_row": (
        f"Redis restart (AOF), down ~{REDIS_DOWN:.0f} s: next row stored",
        "from the private Redis answering PING again until MariaDB holds a row it did not "
        "hold when Redis stopped (polled every 20 ms)",
    ),
    "redis_back": (
        "Redis restart: subscriber's `redis is back after`",
        "the subscriber's own figure: from its first failed Redis call to its first "
        "successful one (includes the outage)",
    ),
    "redis_down": (
        "Redis restart: the outage itself",
        "from SIGTERM to the private Redis until it answers PING again (context)",
    ),
    "db_next_row": (
        f"MariaDB stopped ~{DB_DOWN:.0f} s: next row committed",
        "from the private MariaDB answering a query again until the subscriber's first "
        "successful commit (its `database is back` line, logged right after the commit; "
        "polled every 20 ms)",
    ),
    "db_back": (
        "MariaDB stop: subscriber's `database is back after`",
        "the subscriber's own figure: from its first failed commit to the first one that "
        "succeeds (includes the outage)",
    ),
    "db_down": (
        "MariaDB stop: the outage itself",
        "from SIGTERM to the private MariaDB until it answers a query again (context)",
    ),
}


class RecoveryFailed(SystemExit):
    """A run lost or doubled a transaction, or did not recover: the numbers mean nothing."""


def subscribe(stack: contextlib.ExitStack, env: dict) -> tuple[Script, bytes]:
    """Start a stream subscriber, ended with `stack`; wait until it reads the group.

    The subscriber and its consumer name.
    """
    script = Script("sub_and_store.py", "--stats-interval", "1", env=env)
    stack.callback(script.kill)
    reading = wait_for_log(script, r"reading stream .* as '([^']+)' in group", timeout=60)
    return script, reading.group(1).encode()


def emit(stack: contextlib.ExitStack, count: int, env: dict) -> Script:
    """Start the emitter, ended with `stack`: `emitted(count, USERS, SEED)`, at RATE per second."""
    script = Script(*emitter_args(count, USERS, SEED, RATE), env=env)
    stack.callback(script.kill)
    return script


def logged_since(script: Script, mark: int, pattern: str) -> re.Match | None:
    """The first of the script's lines after its first `mark` ones that matches `pattern`."""
    regex = re.compile(pattern)
    return next((m for m in map(regex.search, script.lines[mark:]) if m), None)


def first_times(
    since: float, checks: dict[str, Callable[[], object]], alive: list[Script]
) -> dict[str, float]:
    """Poll every check until each has held once; seconds from `since` to when each first did.

    Fails at once, with its output, if a script in `alive` exits.
    """
    times: dict[str, float] = {}

    def all_held() -> bool:
        for script in alive:
            if script.proc.poll() is not None:
                raise RecoveryFailed(f"{script.proc.args} exited:\n{script.output}")
        for name, check in checks.items():
            if name not in times and check():
                times[name] = time.monotonic() - since
        return len(times) == len(checks)

    wait_until(all_held, CATCH_UP, ", ".join(checks))
    return times


def window_count(engine) -> int:
    """The transactions counted in user_window_totals."""
    tx_count = models.user_window_totals.c.tx_count
    with engine.connect() as conn:
        return int(conn.scalar(select(func.coalesce(func.sum(tx_count), 0))))


def finish(
    engine, redis_server: PrivateRedis, env: dict, count: int, emitter: Script, subs: list[Script]
) -> None:
    """Wait for the emitter and every row, stop the subscribers, check exactly-once; or abort."""
    if emitter.wait(CATCH_UP) != 0 or f"published {count} transactions" not in emitter.output:
        raise RecoveryFailed(f"the emitter did not send {count}:\n{emitter.output}")
    wait_until_stored(engine, count, subs)
    with redis_server.client() as client:  # a new one: the run may have restarted Redis
        wait_until(lambda: pending(client, env["STREAM"]) == 0, 20, "no pending entries")
        dead = client.llen(Keys(env["KEY_PREFIX"]).dead)
    for sub in subs:
        if sub.stop(signal.SIGTERM) != 0:
            raise RecoveryFailed(f"a subscriber failed to stop cleanly:\n{sub.output}")
    rows, counted = count_rows(engine), window_count(engine)
    if rows != count or counted != rows or dead:
        raise RecoveryFailed(
            f"LOSS OR DUPLICATES: {rows} rows, {counted} in the window totals, "
            f"{dead} dead letters, {count} sent"
        )
    # Then the same txn_ids, amounts and per-user sums as sent, and window totals equal to
    # the raw rows; a failure's traceback shows which of these checks failed.
    assert_stored_exactly(engine, emitted(count, USERS, SEED))


def private_redis(stack: contextlib.ExitStack, directory: Path) -> PrivateRedis:
    """A private Redis, started now and stopped when `stack` closes."""
    server = PrivateRedis(directory / "redis")
    stack.callback(server.stop)
    server.start()
    return server


def kill_a_subscriber(workdir: Path, template: Path) -> dict[str, float]:
    """SIGKILL one of two subscribers while it holds entries; the survivor takes them over."""
    engine = models.make_engine(DATABASE_URL)
    with contextlib.ExitStack() as stack:
        stack.callback(engine.dispose)
        redis_server = private_redis(stack, workdir)
        client = stack.enter_context(redis_server.client())
        models.create_schema(engine)
        empty_tables(engine)
        env = stream_env(
            redis_server.url, DATABASE_URL, KEY_PREFIX, CLAIM_IDLE_MS=str(CLAIM_IDLE_MS)
        )
        victim, victim_name = subscribe(stack, env)
        survivor, _ = subscribe(stack, env)
        emitter = emit(stack, KILL_COUNT, env)
        wait_until_stored(engine, KILL_AT, [victim, survivor, emitter])

        # Freeze the victim until it is caught holding unacknowledged entries, then kill it:
        # a victim holding nothing would leave nothing to take over.
        def frozen_holding_entries() -> int:
            victim.proc.send_signal(signal.SIGSTOP)
            os.waitpid(victim.proc.pid, os.WUNTRACED)
            held = pending(client, env["STREAM"], victim_name)
            if not held:
                victim.proc.send_signal(signal.SIGCONT)
            return held

        held = wait_until(frozen_holding_entries, 20, "the victim holding entries")
        mark = len(survivor.lines)
        killed = time.monotonic()
        victim.proc.kill()
        victim.wait()

        def all_stored() -> bool:
            return count_rows(engine) == KILL_COUNT and pending(client, env["STREAM"]) == 0

        times = first_times(
            killed,
            {
                "kill_took_over": lambda: logged_since(survivor, mark, r"took over \d+ entries"),
                "kill_stored": all_stored,
            },
            [survivor],
        )
        finish(engine, redis_server, env, KILL_COUNT, emitter, [survivor])
        if last_progress(survivor, "claimed") < held:
            raise RecoveryFailed(f"the survivor claimed fewer than the {held} entries left")
        return times


def restart_redis(workdir: Path, template: Path) -> dict[str, float]:
    """Stop the private Redis for REDIS_DOWN seconds while transactions flow, then start it."""
    engine = models.make_engine(DATABASE_URL)
    with contextlib.ExitStack() as stack:
        stack.callback(engine.dispose)
        redis_server = private_redis(stack, workdir)
        models.create_schema(engine)
        empty_tables(engine)
        env = stream_env(redis_server.url, DATABASE_URL, KEY_PREFIX)
        subscriber, _ = subscribe(stack, env)
        emitter = emit(stack, REDIS_COUNT, env)
        wait_until_stored(engine, REDIS_AT, [subscriber, emitter])

        if emitter.proc.poll() is not None:
            raise RecoveryFailed("the emitter finished before the outage: raise REDIS_COUNT")
        mark = len(subscriber.lines)
        stopped = time.monotonic()
        redis_server.stop()
        for script in (emitter, subscriber):  # or the outage tested nothing
            wait_for_log(script, r"redis unavailable", timeout=REDIS_DOWN)
        # No row can be committed now but the batch that was in flight, long done by then.
        time.sleep(max(0.0, stopped + REDIS_DOWN - time.monotonic()))
        before = count_rows(engine)
        redis_server.start()
        up = time.monotonic()

        times = first_times(
            up,
            {
                "redis_next_row": lambda: count_rows(engine) > before,
                "logged": lambda: logged_since(subscriber, mark, r"redis is back after"),
            },
            [subscriber],
        )
        back = logged_since(subscriber, mark, r"redis is back after ([0-9.]+) s")
        finish(engine, redis_server, env, REDIS_COUNT, emitter, [subscriber])
        return {
            "redis_next_row": times["redis_next_row"],
            "redis_back": float(back.group(1)),
            "redis_down": up - stopped,
        }


def stop_mariadb(workdir: Path, template: Path) -> dict[str, float]:
    """Stop a private MariaDB for DB_DOWN seconds while transactions flow, then start it."""
    with contextlib.ExitStack() as stack:
        redis_server = private_redis(stack, workdir)
        db_server = PrivateMariaDB(workdir / "mariadb", template=template)
        stack.callback(db_server.stop)
        db_server.start()
        engine = models.make_engine(db_server.url)
        stack.callback(engine.dispose)
        models.create_schema(engine)
        env = stream_env(redis_server.url, db_server.url, KEY_PREFIX)
        subscriber, _ = subscribe(stack, env)
        emitter = emit(stack, DB_COUNT, env)
        wait_until_stored(engine, DB_AT, [subscriber, emitter])

        if emitter.proc.poll() is not None:
            raise RecoveryFailed("the emitter finished before the outage: raise DB_COUNT")
        mark = len(subscriber.lines)
        before = count_rows(engine)
        stopped = time.monotonic()
        db_server.stop()
        wait_for_log(subscriber, r"database unavailable", timeout=DB_DOWN)
        time.sleep(max(0.0, stopped + DB_DOWN - time.monotonic()))
        db_server.start()
        up = time.monotonic()

        # A row count taken before the stop may miss a commit racing it, and none can be
        # taken during the outage: the subscriber's line after its commit marks the next one.
        times = first_times(
            up,
            {"db_next_row": lambda: logged_since(subscriber, mark, r"database is back after")},
            [subscriber],
        )
        back = logged_since(subscriber, mark, r"database is back after ([0-9.]+) s")
        if count_rows(engine) <= before:
            raise RecoveryFailed("the subscriber said the database is back but stored nothing")
        finish(engine, redis_server, env, DB_COUNT, emitter, [subscriber])
        return {**times, "db_back": float(back.group(1)), "db_down": up - stopped}


# Each takes a directory of its own and an initialised MariaDB datadir to copy, and returns
# its measures in seconds, by their keys in ROWS.
SCENARIOS = (kill_a_subscriber, restart_redis, stop_mariadb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    when = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(
        f"# {when}, {platform.node()}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; stream transport, emitter at {RATE} tx/s, "
        f"median of {args.runs} run(s)"
    )
    print("| scenario | median s | runs (s) | what exactly is measured |")
    print("|---|---:|---|---|")
    with tempfile.TemporaryDirectory(prefix="txstream-recovery-") as tmp:
        template = Path(tmp) / "mariadb-template"
        PrivateMariaDB.install(template)
        for n, scenario in enumerate(SCENARIOS):
            results = [
                scenario(Path(tempfile.mkdtemp(dir=tmp, prefix=f"{n}-{run}-")), template)
                for run in range(args.runs)
            ]
            print_rows(results)


def print_rows(results: list[dict[str, float]]) -> None:
    """The table's rows for one scenario's runs, in the order of ROWS."""
    for key, (name, what) in ROWS.items():
        if key in results[0]:
            values = [result[key] for result in results]
            runs = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {name} | {statistics.median(values):.2f} | {runs} | {what} |", flush=True)


if __name__ == "__main__":
    main()
