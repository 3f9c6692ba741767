"""What the API benchmarks (bench/api.py, bench/heavy_user.py) share: the mark of the seed
a database holds, and the web app under gunicorn as `make serve` runs it, with a token of
its own, measured by wrk (api.lua).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import runpy
import secrets
import shlex
import subprocess  # nosec B404 # runs wrk, by fixed argument lists
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, select, text
from sqlalchemy.exc import SQLAlchemyError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import models  # noqa: E402
from txstream import tokens  # noqa: E402
from txstream.processes import ROOT, web_app  # noqa: E402
from txstream.times import utcnow  # noqa: E402

# Which seed the database holds; written last, so a seed that stopped half-way has none.
SEEDS = Table("bench_api_seed", MetaData(), Column("seed", String(200)), Column("at", DateTime))


def seed_found(engine: Engine, description: str, fresh: timedelta) -> bool:
    """Whether the database holds the seed `description`, made less than `fresh` ago."""
    try:
        with engine.connect() as conn:
            found = conn.execute(select(SEEDS)).first()
    except SQLAlchemyError:  # no database or no table yet
        return False
    if found is None or found.seed != description or utcnow() - found.at > fresh:
        return False
    print(f"using the seed of {found.at:%Y-%m-%d %H:%M} UTC (--reseed makes a new one)")
    return True


def mark_seeded(engine: Engine, description: str) -> None:
    """Note that the database now holds the seed `description`, made now."""
    SEEDS.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(SEEDS.delete())
        conn.execute(SEEDS.insert(), [{"seed": description, "at": utcnow()}])


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """--workers, --threads (gunicorn.conf.py's defaults, or WEB_* if set) and --auth."""
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    number = config.positive_int_flag
    parser.add_argument("--workers", type=number, default=conf["workers"])
    parser.add_argument("--threads", type=number, default=conf["threads"])
    parser.add_argument(
        "--auth", choices=["on", "off"], default="on", help="AUTH of the app (default: on)"
    )


@contextlib.contextmanager
def serving(engine: Engine, redis_url: str, key_prefix: str, args) -> Iterator[tuple[str, str]]:
    """(base URL, bearer token) of the web app serving `engine`'s database, on a free port.

    With tokens required, as by default; the rate limit is set far above what wrk sends
    (each request still counts itself in Redis, as in production). The server is
    stopped and the token revoked on the way out.
    """
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    env |= {"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
    env |= {"SECRET_KEY": secrets.token_hex(32), "RATE_LIMIT": "100000000/minute"}
    env["AUTH"] = args.auth
    env |= {"WEB_WORKERS": str(args.workers), "WEB_THREADS": str(args.threads)}
    token_name = f"bench-{os.getpid()}"
    models.create_schema(engine)  # a seed older than the tokens has no table for them
    token = tokens.create(engine, token_name)
    try:
        with web_app({**env, "LOG_LEVEL": "WARNING"}) as (_server, url):
            yield url, token
    finally:
        tokens.revoke(engine, token_name)


def wrk(url: str, path: str, users: int, connections: int, seconds: int, token: str) -> dict:
    """One wrk run, one thread keeping `connections` requests in flight: api.lua's result.

    `path` with "{user}" replaced by a random user id 1..`users` per request (a path
    without it asks for the same every time). Adds "rps" (requests/s) and "errors"
    (non-2xx responses and socket errors) to api.lua's figures.
    """
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    command += ["-s", str(ROOT / "bench" / "api.lua"), url, "--", path, str(users), token]
    # bandit B603: wrk by a fixed argument list, no shell
    done = subprocess.run(command, capture_output=True, text=True, check=True)  # nosec B603
    output = done.stdout
    r = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    r["rps"] = r["requests"] / r["duration_us"] * 1e6
    r["errors"] = r["non2xx"] + r["socket_errors"]
    return r


def context(engine: Engine, args, data: str) -> str:
    """Date, machine, versions and setup of the figures (`data`: what is stored); a
    warning if the data outgrow RAM."""
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
        f"(1 thread) on the same machine; {data}; {args.duration} s per run; "
        f"AUTH={args.auth}."
    )
    if size > pool:
        words += (
            f" The tables ({size >> 20:,} MiB) outgrow InnoDB's buffer pool ({pool >> 20:,} MiB)."
        )
    return words


def print_setup(engine: Engine, args, data: str) -> None:
    """Print the `context` of the figures and the command that measured them."""
    python = os.path.relpath(sys.executable, ROOT)
    print(f"\n{context(engine, args, data)}\n")
    print(f"```sh\n{shlex.join([python, *sys.argv])}\n```\n")
