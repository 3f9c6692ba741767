"""Subscribers, `flask --app app init-db` and web apps started at once on a new database all
come up: the tables are created once, by whichever comes first, and the layout recorded."""

from __future__ import annotations

import multiprocessing
import secrets

import pytest
from sqlalchemy import inspect, make_url, text

import models
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL
from txstream.aggregates import Layout, recorded_layout
from txstream.processes import start_web_app, wait_healthy
from txstream.store import ensure_layout
from txstream.testing import stream_env, wait_for_log

pytestmark = pytest.mark.services

ROUNDS = 3  # a new database each: the race was lost in 2 of 2 tries before the fix
SUBSCRIBERS, WEB_APPS = 3, 2
SIX_HOURS = Layout.for_window(6 * 3600)


@pytest.fixture
def new_database(tmp_path):
    """A function naming a database that does not exist yet, of the given family: a new
    MariaDB database (dropped at the end) or a new SQLite file."""
    url = make_url(TEST_DATABASE_URL)
    server = models.make_engine(url.set(database="").render_as_string(hide_password=False))
    made: list[str] = []

    def new(family: str) -> str:
        name = f"{url.database}_new_{secrets.token_hex(4)}"
        if family == "sqlite":
            return f"sqlite:///{tmp_path / name}.sqlite3"
        made.append(name)
        return url.set(database=name).render_as_string(hide_password=False)

    yield new
    with server.begin() as conn:
        for name in made:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    server.dispose()


@pytest.mark.parametrize("family", ["mariadb", "sqlite"])
def test_everything_started_at_once_on_a_new_database_comes_up(
    run, redis_client, key_prefix, new_database, family
):
    for round_ in range(ROUNDS):
        database_url = new_database(family)
        env = stream_env(TEST_REDIS_URL, database_url, f"{key_prefix}{round_}:")
        env |= {"WEB_WORKERS": "1", "LOG_LEVEL": "INFO"}
        subscribers = [run("sub_and_store.py", env=env) for _ in range(SUBSCRIBERS)]
        init_db = run("-m", "flask", "--app", "app", "init-db", env=env)
        web_apps = [start_web_app(env) for _ in range(WEB_APPS)]
        try:
            init_db.wait_ok()
            for subscriber in subscribers:
                wait_for_log(subscriber, r"reading .*; waiting for transactions", timeout=60)
            for server, url in web_apps:
                wait_healthy(server, url, timeout=60)
        finally:
            for server, _url in web_apps:
                server.kill()
        for subscriber in subscribers:
            assert subscriber.stop() == 0, subscriber.output

        engine = models.make_engine(database_url)
        try:
            assert set(inspect(engine).get_table_names()) == set(models.Base.metadata.tables)
            with engine.connect() as conn:
                assert recorded_layout(conn) == SIX_HOURS
        finally:
            engine.dispose()


_barrier = None  # each pool worker's, set by _meet_at


def _meet_at(barrier) -> None:
    global _barrier
    _barrier = barrier


def _prepare_database(url: str) -> str | None:
    """What a subscriber does first, once every worker is ready: None, or its error."""
    engine = models.make_engine(url)
    _barrier.wait(timeout=60)
    try:
        models.create_schema(engine)
        ensure_layout(engine, SIX_HOURS)
    except Exception as exc:  # the test shows it
        return repr(exc)
    finally:
        engine.dispose()
    return None


@pytest.mark.parametrize("family, rounds", [("mariadb", 10), ("sqlite", 100)])
def test_processes_preparing_a_new_database_at_once_all_succeed(new_database, family, rounds):
    # Processes, not threads: SQLite answers another process's switch to WAL mode, or an
    # upgrade to a writer, "database is locked" at once; threads of one process wait.
    processes = 6
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, initializer=_meet_at, initargs=(barrier,)) as pool:
        for round_ in range(rounds):
            url = new_database(family)
            errors = [e for e in pool.map(_prepare_database, [url] * processes, 1) if e]
            assert errors == [], f"round {round_}"
