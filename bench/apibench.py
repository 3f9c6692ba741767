"""What the API benchmarks (bench/api.py, bench/heavy_user.py) share: the mark of the seed
a database holds, and the web app under gunicorn alone or as `make serve` runs it (nginx in
front), with a token of its own, measured by wrk (api.lua) and by its processes' CPU.
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
import subprocess  # nosec B404 # runs wrk and nginx -v, by fixed argument lists
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, select, text
from sqlalchemy.exc import SQLAlchemyError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import pid_cpu_s  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
from txstream import tokens  # noqa: E402
from txstream.processes import ROOT, SERVE, Script, web_app  # noqa: E402
from txstream.serve import nginx_binary  # noqa: E402
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


# How bench/api.py can serve the web app: the command, run in the tree being measured.
SERVERS = {
    "gunicorn": SERVE,  # gunicorn alone: what `make serve` ran before issue #20
    "serve": ("-m", "txstream.serve"),  # `make serve` since: nginx in front of gunicorn
}


def serves(tree: Path, server: str) -> bool:
    """Whether the checkout `tree` can be served by `server` (older ones have no serve.py)."""
    return server == "gunicorn" or (tree / "txstream" / "serve.py").exists()


def app_env(engine: Engine, redis_url: str, key_prefix: str, args) -> dict[str, str]:
    """The web app's environment: `engine`'s database, tokens required (as by default),
    the rate limit far above what wrk sends (each request still counts itself in Redis,
    as in production)."""
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    env |= {"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
    env |= {"SECRET_KEY": secrets.token_hex(32), "RATE_LIMIT": "100000000/minute"}
    env |= {"AUTH": args.auth, "LOG_LEVEL": "WARNING"}
    env |= {"WEB_WORKERS": str(args.workers), "WEB_THREADS": str(args.threads)}
    return env


@contextlib.contextmanager
def bench_token(engine: Engine) -> Iterator[str]:
    """A bearer token of its own for the run, revoked on the way out."""
    token_name = f"bench-{os.getpid()}"
    models.create_schema(engine)  # a seed older than the tokens has no table for them
    token = tokens.create(engine, token_name)
    try:
        yield token
    finally:
        tokens.revoke(engine, token_name)


@contextlib.contextmanager
def web_server(
    env: dict[str, str], tree: Path = ROOT, server: str = "gunicorn"
) -> Iterator[tuple[Script, str]]:
    """(the process, its base URL): the web app of the checkout `tree`, served by `server`
    (SERVERS) on a free port, with `env`; stopped on the way out."""
    env = {**env, "PYTHONPATH": str(tree)}  # that tree's code, whatever runs it
    with web_app(env, command=SERVERS[server], cwd=tree) as served:
        yield served


def tree_cpu_s(pid: int) -> float:
    """The CPU seconds process `pid` and its descendants alive now have used so far: a web
    app's own cost (gunicorn's master and workers, nginx's), whatever else the machine runs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # exited meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    pids, spent = [pid], 0.0
    while pids:
        pid = pids.pop()
        pids += children.get(pid, [])
        with contextlib.suppress(OSError):
            spent += pid_cpu_s(pid)
    return spent


@contextlib.contextmanager
def serving(engine: Engine, redis_url: str, key_prefix: str, args) -> Iterator[tuple[str, str]]:
    """(base URL, bearer token) of this tree's web app under gunicorn, serving `engine`'s
    database (`app_env`), on a free port; stopped and the token revoked on the way out."""
    with bench_token(engine) as token:
        with web_server(app_env(engine, redis_url, key_prefix, args)) as (_process, url):
            yield url, token


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
    if "serve" in getattr(args, "serve", ()):
        words += f" `make serve`: {nginx_version()} in front of gunicorn."
    if size > pool:
        words += (
            f" The tables ({size >> 20:,} MiB) outgrow InnoDB's buffer pool ({pool >> 20:,} MiB)."
        )
    return words


def nginx_version() -> str:
    """What `nginx -v` says of the nginx that txstream/serve.py starts, e.g. nginx/1.22.1."""
    # bandit B603: the nginx serve.py runs, by a fixed argument list
    done = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)  # nosec B603
    return done.stderr.strip().rpartition(": ")[2]


def print_setup(engine: Engine, args, data: str) -> None:
    """Print the `context` of the figures and the command that measured them."""
    python = os.path.relpath(sys.executable, ROOT)
    print(f"\n{context(engine, args, data)}\n")
    print(f"```sh\n{shlex.join([python, *sys.argv])}\n```\n")
