"""What the stream's cap costs Redis: the emitter's append script, the subscribers' trim.

On a private Redis (a child redis-server on a free port, nothing else on it), Redis's own
time per call (INFO commandstats), the median of `--calls` calls:

- the emitter's append script for a chunk of BURST_CHUNK lines, as shipped (TYPE and XLEN,
  then one XADD a line) and without its cap check (the XADDs alone);
- the trim alone (`TRIM_ACKNOWLEDGED_LUA`: XINFO GROUPS, XPENDING per group, XTRIM MINID ~)
  after a batch of BATCH_SIZE entries is acknowledged, with one and two groups;
- the subscriber's whole batch script (recent lists, counters, XACK, trim) with and without
  the trim, for batches of BATCH_SIZE new transactions of 10,000 users.

    .venv/bin/python bench/stream_cap.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from emitter_and_pub import BURST_CHUNK  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.store import _WRITE_BATCH, Committed, Store  # noqa: E402
from txstream.testing import PrivateRedis  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402
from txstream.transport import _XADD_ALL, TRIM_ACKNOWLEDGED_LUA  # noqa: E402

BATCH = config.Settings.batch_size
USERS = 10_000
STREAM = "bench-stream"
TRIM_CALL = "if n_ids > 0 then trim_acknowledged(KEYS[1]) end"


def redis_us(client, command: str, call: Callable, *args, **kwargs) -> float:
    """Redis's own time (µs) for `call(*args, **kwargs)`, which runs `command` once."""
    client.config_resetstat()
    call(*args, **kwargs)
    return client.info("commandstats")[f"cmdstat_{command}"]["usec"]


def lines(n: int, rng: random.Random) -> list[str]:
    """Wire lines of the emitter's size."""
    return [
        f"{rng.randint(1, USERS)},12.34,1796000000.123456,t{rng.getrandbits(64):x}"
        for _ in range(n)
    ]


def fill(client, stream: str, wire_lines: list[str]) -> list[bytes]:
    """Append `wire_lines` to `stream`, an XADD each, in one round trip; their entry ids."""
    with client.pipeline(transaction=False) as pipe:
        for line in wire_lines:
            pipe.xadd(stream, {"line": line})
        return pipe.execute()


def append(client, calls: int, rng: random.Random) -> dict[str, float]:
    """The append script per chunk, with and without its cap check."""
    unchecked = "for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'line', ARGV[i]) end"
    times: dict[str, list[float]] = {"append script, as shipped": [], "XADDs alone": []}
    for _ in range(calls):
        chunk = lines(BURST_CHUNK, rng)
        for name, script in zip(times, (_XADD_ALL, unchecked), strict=True):
            times[name].append(
                redis_us(client, "eval", client.eval, script, 1, STREAM, 10**9, *chunk)
            )
        client.delete(STREAM)
    return {name: statistics.median(values) for name, values in times.items()}


def trim(client, calls: int, groups: int, rng: random.Random) -> float:
    """The trim after each batch, a quarter of each batch left pending till the next."""
    client.delete(STREAM)
    script = client.register_script(TRIM_ACKNOWLEDGED_LUA + "return trim_acknowledged(KEYS[1])")
    names = [f"g{g}" for g in range(groups)]
    for name in names:
        client.xgroup_create(STREAM, name, id="0", mkstream=True)
    held: dict[str, list[bytes]] = {name: [] for name in names}
    times = []
    for _ in range(calls):
        fill(client, STREAM, lines(BATCH, rng))
        for name in names:
            ((_, entries),) = client.xreadgroup(name, "me", {STREAM: ">"}, count=BATCH)
            ids = [entry_id for entry_id, _ in entries]
            client.xack(STREAM, name, *held[name], *ids[: BATCH * 3 // 4])
            held[name] = ids[BATCH * 3 // 4 :]
        times.append(redis_us(client, "evalsha", script, keys=[STREAM]))
    return statistics.median(times)


def batch_script(client, calls: int, rng: random.Random) -> dict[str, float]:
    """The subscriber's batch script per batch, with and without the trim: two stores, each
    with a stream and keys of its own, given the same batches, taking turns to go first."""
    names = ("batch script, as shipped", "without the trim")
    stores = []
    for name in names:
        keys = Keys(f"{name}:", stream=f"{name}:stream")
        client.xgroup_create(keys.stream, "store", id="0", mkstream=True)
        store = Store(None, client, keys, 6 * 3600, group="store")
        if name != names[0]:
            store._write_batch = client.register_script(_WRITE_BATCH.replace(TRIM_CALL, ""))
        stores.append(store)
    at, times = datetime(2026, 12, 1), {name: [] for name in names}
    turns = list(zip(names, stores, strict=True))
    for _ in range(calls):
        turns.reverse()  # each goes first every other time
        batch = []
        for line in lines(BATCH, rng):
            at += timedelta(milliseconds=1)
            batch.append(
                (line, Transaction(line.rsplit(",", 1)[1], rng.randint(1, USERS), Decimal(1), at))
            )
        for name, store in turns:
            ids = fill(client, store.keys.stream, [line for line, _ in batch])
            client.xreadgroup("store", "me", {store.keys.stream: ">"}, count=BATCH)
            committed = Committed(new=[tx for _, tx in batch])
            times[name].append(
                redis_us(client, "evalsha", store.write_redis, committed, [], {0: ids})
            )
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="calls measured per figure")
    args = parser.parse_args()
    rng = random.Random(1)  # nosec B311 # made-up lines, the same every run
    with tempfile.TemporaryDirectory(prefix="txstream-bench-") as tmp:
        server = PrivateRedis(Path(tmp), appendfsync="no")
        server.start()
        try:
            with server.client() as client:
                print(f"Redis's own time per call, median of {args.calls} calls:")
                for name, us in append(client, args.calls, rng).items():
                    print(f"  {name}, {BURST_CHUNK} lines: {us:,.0f} µs")
                for groups in (1, 2):
                    us = trim(client, args.calls, groups, rng)
                    print(f"  the trim after a batch of {BATCH}, {groups} group(s): {us:,.0f} µs")
                for name, us in batch_script(client, args.calls, rng).items():
                    print(f"  {name}, {BATCH} transactions of {USERS:,} users: {us:,.0f} µs")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
