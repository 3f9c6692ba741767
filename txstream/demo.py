"""`make demo`: the whole system as three processes — emitter, subscriber and web app.

While REDIS_URL and DATABASE_URL are unset (environment and `.env`), it needs no
servers: it starts fakeredis's Redis-protocol TCP server on a free loopback port,
which the three processes share, and uses a SQLite file. When they are set, it uses
those servers. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

import config
import models
from txstream import tokens
from txstream.processes import ROOT, Script, TimedOut, free_port, wait_until
from txstream.transport import listening

log = logging.getLogger("demo")


def serve_fake_redis(port: int) -> None:
    """Run fakeredis's TCP server (a Redis-protocol server in memory) until terminated."""
    from fakeredis import TcpFakeServer
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler

    class KeepConnectionsOnErrors(TCPFakeRequestHandler):
        """fakeredis 2.40-2.41 closes a connection after any error reply (its handler
        catches the error it raises for one). redis-py answers NOSCRIPT by loading the
        script on the same connection, so the first call of every script would fail, and
        keep failing. Here an error reply is sent as a reply, as Redis does."""

        def setup(self) -> None:
            super().setup()
            read = self.current_client.read_response

            def read_response(**kwargs):
                try:
                    return read(**kwargs)
                except redis.ResponseError as exc:
                    return exc  # sent as an error reply

            self.current_client.read_response = read_response

    # Ctrl-C reaches this process too; the demo terminates it last (SIGTERM, which ends
    # it, whatever the demo's own handler that a fork inherits), after the subscriber
    # has written its final batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.RequestHandlerClass = KeepConnectionsOnErrors
    server.serve_forever()


def wait_for(condition: Callable[[], bool], what: str, timeout: float, children: list[Script]):
    """Wait until `condition()` holds, failing early if a child process has died."""

    def ready() -> bool:
        dead = [c.name for c in children if c.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up (see its output)")
        return condition()

    wait_until(ready, timeout, what, interval=0.2)


def child(name: str, *args: str, env: dict[str, str]) -> Script:
    """One process of the demo, its output echoed with `name` in front.

    In a session of its own: Ctrl-C reaches the demo, which stops the children in order.
    """
    return Script(*args, env=env, echo_as=name, new_session=True)


def answers_200(url: str) -> bool:
    """Whether `url` answers 200."""
    try:
        # bandit B310: the URL is http://127.0.0.1:<port>/..., made here
        with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310
            return response.status == 200
    except OSError:
        return False


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The demos' command-line flags (this one's and `make cluster-demo`'s)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=5000, help="web port (default: %(default)s)")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="transactions per second (default: %(default)s)"
    )
    parser.add_argument("--users", type=int, default=20, help="user population (default: 20)")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "var", help="where its files go (default: var/)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo on the configured Redis, or on an embedded fakeredis server."""
    args = argument_parser(
        "Run txstream's emitter, subscriber and web app together. Uses an embedded Redis "
        "(fakeredis) and a SQLite file unless REDIS_URL / DATABASE_URL are set."
    ).parse_args(argv)
    config.configure_logging("INFO")
    signal.signal(signal.SIGTERM, interrupt)
    if config.is_set("REDIS_URL"):
        return run_system(args, {}, f"Redis at {config.mask_url(config.load().redis_url)}")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    fake_redis = multiprocessing.Process(target=serve_fake_redis, args=(port,), daemon=True)
    fake_redis.start()
    try:
        what = f"embedded fakeredis server at {url} (in memory)"
        return run_system(args, {"REDIS_URL": url}, what)
    finally:
        fake_redis.terminate()
        fake_redis.join(5)


def run_system(
    args: argparse.Namespace,
    overrides: dict[str, str],
    redis_what: str,
    subscribers: int = 1,
    notes: Sequence[str] = (),
) -> int:
    """Run the subscriber(s), the web app and the emitter with the environment plus
    `overrides`, print where they are (and `notes`), and stop them all on Ctrl-C or
    SIGTERM, or when one of them exits; the exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **overrides}
    settings = config.load(env)
    if config.is_set("DATABASE_URL"):
        database_url = settings.database_url
        db_what = f"database {config.mask_url(database_url)}"
    else:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{args.data_dir / 'demo.sqlite3'}"
        env["DATABASE_URL"] = database_url
        db_what = f"SQLite file {args.data_dir / 'demo.sqlite3'}"
    engine = models.make_engine(database_url)
    # This run's own token and session key: revoked and forgotten when the demo stops.
    token_name, token = f"demo-{os.getpid()}", None
    env.setdefault("SECRET_KEY", secrets.token_hex(32))
    web_port = free_port(args.port)
    url = f"http://127.0.0.1:{web_port}/"
    rate, users = str(args.rate), str(args.users)
    children: list[Script] = []
    status = 0
    try:
        models.create_schema(engine)
        token = tokens.create(engine, token_name) if settings.auth else None
        for i in range(subscribers):
            name = "subscriber" if subscribers == 1 else f"subscriber-{i + 1}"
            children.append(child(name, "sub_and_store.py", env=_metrics_port(env, settings, i)))
        web_args = ("-m", "flask", "--app", "app", "run", "--port", str(web_port))
        children.append(child("web", *web_args, env=env))
        wait_for(lambda: listening(settings), "the subscriber subscribing", 60, children)
        # Started once the subscriber listens: pub/sub keeps nothing for latecomers.
        emitter = child("emitter", "emitter_and_pub.py", "--rate", rate, "--users", users, env=env)
        children.append(emitter)
        wait_for(lambda: answers_200(url + "healthz"), "the web app answering", 60, children)
        print(access_lines(url, token, redis_what, db_what, notes), flush=True)
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        dead = [c.name for c in children if c.proc.poll() is not None]
        log.error("%s exited; stopping the demo", ", ".join(dead))
        status = 1
    except KeyboardInterrupt:
        log.info("stopping the demo")
    except (RuntimeError, TimedOut) as exc:
        log.error("%s", exc)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in reversed(children):  # emitter first: the subscribers store what was sent
            process.kill()
        if token is not None:
            tokens.revoke(engine, token_name)
        engine.dispose()
    return status


def _metrics_port(env: dict[str, str], settings: config.Settings, index: int) -> dict[str, str]:
    """The environment of the `index`th subscriber: a metrics port of its own, the configured
    one (plus `index`) if it is free, else any free one."""
    if not settings.metrics_port:
        return env
    return {**env, "METRICS_PORT": str(free_port(settings.metrics_port + index))}


def access_lines(
    url: str, token: str | None, redis_what: str, db_what: str, notes: Sequence[str] = ()
) -> str:
    """What the demo prints once it runs: where everything is, and how to get in."""
    if token is None:
        web, api = f"{url}    <- open this (AUTH=off)", f"curl {url}api/transactions"
    else:
        web = f"{url}login    <- open this, and paste the token"
        api = f'curl -H "Authorization: Bearer {token}" {url}api/transactions'
    lines = [
        "",
        "  txstream demo is running",
        f"    Redis     {redis_what}",
        f"    Database  {db_what}",
        *notes,
        f"    Web       {web}",
        *([f"    Token     {token}   (this run's; revoked when the demo stops)"] if token else []),
        f"    API       {api}",
        "  Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def interrupt(_signum, _frame) -> None:
    """SIGTERM's handler: stop as on Ctrl-C."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
