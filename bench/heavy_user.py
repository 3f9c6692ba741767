"""A heavy user's sums against light users': one user with 1,000,000 transactions.

Seeds, unless that seed is there already and fresh (`--reseed` forces it): one heavy user
with `--heavy` transactions over the last `--days` days, beside `--light-users` light users
with `--light` transactions each over the same days, all in time order. They go the way
real ones do: sent with txstream's stream sink into a stream, then stored by the real
subscriber, `sub_and_store.py --max-messages N` until the stream is drained (as
bench/drain.py does), so the totals tables hold what the subscriber makes of them; the
stored rows and totals are then checked for exactly once. Then the web app under gunicorn
as bench/api.py serves it, and wrk at concurrency 8 on `/api/users/{user}/sum?hours=H`
for each H, for the heavy user and for random light users, taking turns. Prints one timed
single request of the heavy user and a Markdown table with the heavy / light p99 ratio.

    .venv/bin/python bench/heavy_user.py [--hours 168 5.5] [--duration 10] [--reseed]

A seed is fresh for an hour (the sums reach back from now, and the rows end when it was
made) and while txstream's code is that of the seed. Uses the database
`txstream_bench_heavy` (or BENCH_HEAVY_DATABASE_URL), Redis db 10 (or
BENCH_HEAVY_REDIS_URL), keys `benchheavy:`. Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path

import redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apibench import add_server_flags, mark_seeded, print_setup, seed_found, serving, wrk  # noqa: E402
from ingest import check_exactly_once  # noqa: E402
from trees import git  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from emitter_and_pub import BURST_CHUNK, uuid4_text  # noqa: E402
from txstream.processes import ROOT, Script, wait_until  # noqa: E402
from txstream.times import from_micros, to_micros, utcnow  # noqa: E402
from txstream.transaction import Transaction  # noqa: E402
from txstream.transport import StreamSink  # noqa: E402
from txstream.wire import format_line  # noqa: E402

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream_bench_heavy"
DATABASE_URL = os.environ.get("BENCH_HEAVY_DATABASE_URL") or DEFAULT_URL
REDIS_URL = os.environ.get("BENCH_HEAVY_REDIS_URL") or "redis://127.0.0.1:6379/10"
KEY_PREFIX = "benchheavy:"
STREAM = "benchheavy"
FRESH = timedelta(hours=1)
CONNECTIONS = 8
SUBSCRIBER_CODE = ("sub_and_store.py", "config.py", "models.py", "txstream")
ROW = "| {} | {} | {:,.1f} | {:.2f} | {:.2f} | {} | {} |"  # of the Markdown table


def transactions(args) -> Iterator[Transaction]:
    """The seed's transactions in time order, the same every time but for `now`.

    The heavy user's i-th falls in the i-th slice of the span; the light users' anywhere
    in it. All in the past, so the subscriber accepts every one.
    """
    rng = random.Random(1)  # nosec B311 # made-up transactions, the same every run
    span = args.days * 86_400_000_000  # microseconds
    end = to_micros(utcnow())
    step = span // args.heavy
    heavy = (
        (end - span + i * step + rng.randrange(step), args.heavy_user) for i in range(args.heavy)
    )
    light = sorted(
        (end - span + rng.randrange(span), user)
        for user in range(1, args.light_users + 1)
        for _ in range(args.light)
    )
    for micros, user in heapq.merge(heavy, light):
        cents = rng.randrange(-2_500, 47_500) or 1  # about 5% refunds
        txn_id = uuid4_text(rng.getrandbits(128))
        yield Transaction(txn_id, user, Decimal(cents).scaleb(-2), from_micros(micros))


def seed(engine, client: redis.Redis, args) -> None:
    """Make the database anew, through the stream and the real subscriber; print how fast."""
    server = models.make_engine(engine.url.set(database="").render_as_string(False))
    with server.begin() as conn:
        database = server.dialect.identifier_preparer.quote(engine.url.database)
        conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
    server.dispose()
    client.flushdb()
    total = args.heavy + args.light_users * args.light
    started = time.monotonic()
    sink = StreamSink(client, STREAM, 0)  # no cap: the feed never waits
    txns = transactions(args)
    while lines := [format_line(tx) for tx in islice(txns, BURST_CHUNK)]:
        sink.send(lines)
    filled = time.monotonic()
    env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": DATABASE_URL, "KEY_PREFIX": KEY_PREFIX}
    env |= {"TRANSPORT": "stream", "STREAM": STREAM, "LOG_LEVEL": "WARNING"}
    Script("sub_and_store.py", "--max-messages", str(total), env=env).wait_ok(3600)
    stored = time.monotonic()
    client.delete(STREAM)  # its memory; the recent lists stay
    checked = check_exactly_once(engine, total, ROOT)
    mark_seeded(engine, describe(args))
    print(
        f"seeded {total:,} transactions: stream filled in {filled - started:.1f} s, "
        f"stored by sub_and_store.py in {stored - filled:.1f} s "
        f"({total / (stored - filled):,.0f} tx/s); exactly once: {', '.join(checked)}"
    )


def describe(args) -> str:
    """The seed that `args` ask for, in words, with the code that stores it: the last
    commit that changed it, and whether it has changed since."""
    changed = git("status", "--porcelain", "--", *SUBSCRIBER_CODE)
    code = git("log", "-1", "--format=%h", "--", *SUBSCRIBER_CODE)
    code += " with changes" if changed else ""
    return (
        f"{args.heavy:,} transactions of user {args.heavy_user} and {args.light:,} of each of "
        f"{args.light_users:,} light users over {args.days} days, stored by txstream {code}"
    )


def one_request(url: str, path: str, token: str) -> tuple[float, str]:
    """(milliseconds, response body) of one GET, as curl would make it."""
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    # bandit B310: an http:// URL made here
    with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310
        body = response.read().decode()
    return (time.perf_counter() - started) * 1e3, body


def settle(url: str, token: str) -> None:
    """Wait until the server has served what the last wrk run left queued (wrk stops
    waiting for its requests, the workers do not): until a request comes back at once."""
    wait_until(lambda: one_request(url, "/healthz", token)[0] < 100, 120, "the queue to drain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number = config.positive_int_flag
    parser.add_argument("--heavy", type=number, default=1_000_000, help="the heavy user's")
    parser.add_argument("--light-users", type=number, default=1_000)
    parser.add_argument("--light", type=number, default=50, help="each light user's")
    parser.add_argument("--days", type=number, default=7)
    parser.add_argument("--hours", nargs="+", default=["168", "5.5"], help="H of the sums")
    parser.add_argument("--reseed", action="store_true", help="seed even if seeded already")
    parser.add_argument("--duration", type=number, default=10, help="seconds per run")
    add_server_flags(parser)
    args = parser.parse_args()
    args.heavy_user = args.light_users + 1  # the light users are 1..light_users
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    engine = models.make_engine(DATABASE_URL)
    client = redis.Redis.from_url(REDIS_URL)
    if args.reseed or not seed_found(engine, describe(args), FRESH):
        seed(engine, client, args)
    kinds = {"light": ("{user}", args.light_users), "heavy": (str(args.heavy_user), 1)}
    rows = []
    with serving(engine, REDIS_URL, KEY_PREFIX, args) as (url, token):
        single_path = f"/api/users/{args.heavy_user}/sum?hours=168"
        single = [one_request(url, single_path, token) for _ in range(2)]
        for hours in args.hours:
            p99 = {}
            for kind, (user, users) in kinds.items():
                path = f"/api/users/{user}/sum?hours={hours}"
                settle(url, token)
                wrk(url, path, users, CONNECTIONS, 1, token)  # warm-up, not reported
                r = wrk(url, path, users, CONNECTIONS, args.duration, token)
                p99[kind] = r["p99_us"]
                ratio = f"{p99['heavy'] / p99['light']:.2f}" if kind == "heavy" else ""
                rows.append((kind, hours, r["rps"], r["p50_us"], r["p99_us"], r["errors"], ratio))
                print(f"{kind} x hours={hours}: {r['rps']:,.0f} requests/s", file=sys.stderr)
    print_setup(engine, args, f"{describe(args)}; concurrency {CONNECTIONS}")
    (first, body), (again, _) = single
    print(f"one request, `GET {single_path}`: {first:.1f} ms (again: {again:.1f} ms)")
    print(f"-> {body.strip()}\n")
    print("| user | hours | requests/s | p50 ms | p99 ms | errors | heavy / light p99 |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for kind, hours, rps, p50, p99, errors, ratio in rows:
        print(ROW.format(kind, hours, rps, p50 / 1e3, p99 / 1e3, errors, ratio))
    print("\ntarget: heavy p99 <= 2x light p99, and <= 5 ms")
    if any(row[5] for row in rows):
        raise SystemExit("some requests failed: errors are non-2xx responses and socket errors")


if __name__ == "__main__":
    main()
