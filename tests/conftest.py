"""Shared fixtures: fast fakes (fakeredis, SQLite) and the real Redis and MariaDB.

Tests that need the real servers take `redis_client` / `mysql_engine` and are marked
`services`. They skip when a server does not answer, except with REQUIRE_SERVICES=1
(CI), where they fail. They use a database of this pytest run's own (`txstream_test_`
and a random suffix, dropped at the end), Redis db 15 and a fresh key prefix and channel
per test, so they never touch real data, nor another run's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis
from hypothesis import settings
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

import config
import models
from tests.helpers import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    TEST_SECRET_KEY,
    OneNodeCluster,
    service_unavailable,
    signed_in_client,
)
from txstream.browsing import (
    DESKTOP,
    chromium,
    fatal_console_messages,
    running_system,
    sign_in,
)
from txstream.processes import Script, free_port
from txstream.testing import (
    ACL_FILE,
    ADMIN_USER,
    PrivateMariaDB,
    PrivateRedis,
    PrivateRedisCluster,
    PrivateServer,
    ServerMissing,
    empty_tables,
    make_tls_files,
)

# hypothesis: the same examples on every run, here and in CI, and no example database, so a
# failure always reproduces and a pass never depends on luck; a few seconds in all.
settings.register_profile("txstream", derandomize=True, database=None, deadline=None)
settings.load_profile("txstream")


@pytest.fixture(scope="session", autouse=True)
def _no_metrics_port():
    """The scripts the tests start serve no metrics unless a test asks (METRICS_PORT):
    the default port is one per host, and test runs and subscribers run side by side."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METRICS_PORT", "0")
        yield


@pytest.fixture
def run():
    """Start a script (`run(*args, env=...)`); every one started is stopped at the end."""
    started: list[Script] = []

    def start(*args: str, env: dict) -> Script:
        script = Script(*args, env=env)
        started.append(script)
        return script

    yield start
    for script in started:
        script.kill()


@pytest.fixture
def fake_redis():
    """A fresh in-memory fakeredis client (bytes responses, like the real client)."""
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def closed_port():
    """A local TCP port that nothing listens on."""
    return free_port()


@pytest.fixture
def sqlite_engine(tmp_path):
    """A SQLite database with txstream's tables, in a temporary file."""
    engine = models.make_engine(f"sqlite:///{tmp_path / 'txstream.sqlite3'}")
    models.create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def key_prefix():
    """A Redis key prefix of this test's own."""
    return f"txstream-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def channel():
    """A pub/sub channel of this test's own (channels are shared by all Redis dbs)."""
    return f"txstream-test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(key_prefix):
    """A client of the real Redis (db 15); this test's keys are deleted afterwards."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {TEST_REDIS_URL}", exc)
    yield client
    keys = list(client.scan_iter(match=key_prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def _mysql_database():
    """This run's test database, created once per session and dropped at its end."""
    url = make_url(TEST_DATABASE_URL)
    server = models.make_engine(url.set(database="").render_as_string(hide_password=False))
    engine = models.make_engine(TEST_DATABASE_URL)
    drop = text(f"DROP DATABASE IF EXISTS `{url.database}`")
    try:
        models.create_schema(engine)
    except OperationalError as exc:
        engine.dispose()
        server.dispose()
        service_unavailable(f"MariaDB at {config.mask_url(TEST_DATABASE_URL)}", exc)
    try:
        yield engine
    finally:
        engine.dispose()
        with server.begin() as conn:
            conn.execute(drop)
        server.dispose()


@pytest.fixture
def mysql_engine(_mysql_database):
    """The real MariaDB test database, with empty tables."""
    empty_tables(_mysql_database)
    return _mysql_database


@pytest.fixture
def mariadb_engine(mysql_engine):
    """The same test database through SQLAlchemy's MariaDB dialect (`mariadb+pymysql://`)."""
    url = mysql_engine.url.set(drivername="mariadb+pymysql")
    engine = models.make_engine(url.render_as_string(hide_password=False))
    assert engine.dialect.name == "mariadb"
    yield engine
    engine.dispose()


@pytest.fixture(
    params=["sqlite+fakeredis", pytest.param("mariadb+redis", marks=pytest.mark.services)]
)
def backend(request):
    """(engine, Redis client): a test taking it runs on SQLite with fakeredis, and on the
    real MariaDB and Redis."""
    names = {  # backend: (engine fixture, Redis client fixture)
        "sqlite+fakeredis": ("sqlite_engine", "fake_redis"),
        "mariadb+redis": ("mysql_engine", "redis_client"),
    }
    return tuple(request.getfixturevalue(name) for name in names[request.param])


@pytest.fixture
def app(sqlite_engine, fake_redis):
    """The web app on SQLite and fakeredis; its CLOCK always says 2024-05-06 12:00 UTC."""
    from datetime import datetime
    from decimal import Decimal

    from app import create_app  # here, not at the top: importing `app` builds an app

    now = datetime(2024, 5, 6, 12, 0, 0)
    return create_app(
        {
            "TESTING": True,
            "ENGINE": sqlite_engine,
            "REDIS": fake_redis,
            "KEY_PREFIX": "txstream-test:",
            "WINDOW_HOURS": Decimal(6),
            "CLOCK": lambda: now,
            "SECRET_KEY": TEST_SECRET_KEY,
        }
    )


@pytest.fixture
def client(app):
    """A test client of `app`, signed in: a valid bearer token and a page session."""
    return signed_in_client(app)


@pytest.fixture
def anonymous(app):
    """A test client of `app` that has no token and no session."""
    return app.test_client()


@pytest.fixture(scope="session")
def _mariadb_template(tmp_path_factory):
    """An initialised MariaDB datadir, made once per session and copied by each test."""
    datadir = tmp_path_factory.mktemp("mariadb-template") / "data"
    try:
        PrivateMariaDB.install(datadir)
    except ServerMissing as exc:
        service_unavailable("A private MariaDB", exc)
    return datadir


def _serve(
    what: str, make: Callable[[], PrivateServer | PrivateRedisCluster]
) -> Iterator[PrivateServer | PrivateRedisCluster]:
    """Start the server(s) that `make` builds; stop them at the end, whatever the test did.
    Skips without their binaries (fails with REQUIRE_SERVICES=1)."""
    try:
        server = make()
    except ServerMissing as exc:
        service_unavailable(what, exc)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of this test's own (AOF, fsync always), free to stop, restart or kill."""
    yield from _serve("A private Redis", lambda: PrivateRedis(tmp_path / "redis"))


@pytest.fixture
def one_node_cluster(tmp_path):
    """A Redis Cluster of one node holding every slot (tests.helpers.OneNodeCluster): what a
    cluster refuses (CROSSSLOT) it refuses too."""
    yield from _serve("A private Redis Cluster node", lambda: OneNodeCluster(tmp_path / "redis"))


@pytest.fixture
def acl_redis(tmp_path):
    """A Redis server of this test's own with the users of deploy/redis.acl (`default` off),
    each with a new password (`acl_redis.url_for(user)`); its own clients log in as admin."""
    yield from _serve(
        "A private Redis",
        lambda: PrivateRedis(tmp_path / "redis", acl_file=ACL_FILE, login=ADMIN_USER),
    )


@pytest.fixture
def tls_redis(tmp_path):
    """A Redis server of this test's own that speaks TLS only, with a certificate made for it
    (`tls_redis.tls.ca` is its CA); `tls_redis.url` checks the certificate."""

    def make() -> PrivateRedis:
        tls = make_tls_files(tmp_path / "tls")
        return PrivateRedis(tmp_path / "redis", tls=tls)

    yield from _serve("A private Redis with TLS (and openssl)", make)


@pytest.fixture
def redis_cluster(tmp_path):
    """A Redis Cluster of this test's own (PrivateRedisCluster): 3 masters with a replica
    each, healthy, a node judged failed after 1000 ms; free to kill and restart nodes.

    One per test, as a test leaves it changed: on the 2-core VM it starts in 2.1-2.4 s
    (median 2.2 s over 8 starts; `pytest -m cluster --durations=0` shows it as the setup)
    and stops in 0.2-0.5 s, little beside what a cluster test itself takes."""
    yield from _serve(
        "A private Redis Cluster (redis-server and redis-cli)",
        lambda: PrivateRedisCluster(tmp_path / "cluster"),
    )


@pytest.fixture
def private_mariadb(tmp_path, _mariadb_template):
    """A MariaDB server of this test's own (root, no password), free to stop or restart."""
    yield from _serve(
        "A private MariaDB",
        lambda: PrivateMariaDB(tmp_path / "mariadb", template=_mariadb_template),
    )


# --- The browser tests: Chromium, and the whole system running for it ----------------------


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium through Playwright, one for the whole run (a page per test)."""
    try:
        with chromium() as launched:
            yield launched
    except ServerMissing as exc:
        service_unavailable("Chromium", exc)


@pytest.fixture(scope="module")
def system(_mysql_database):
    """The subscriber and the web app (gunicorn, AUTH on) on this run's database and a key
    prefix of this module's own, for the browser tests (txstream.browsing.System)."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {TEST_REDIS_URL}", exc)
    prefix = f"txstream-test:{uuid.uuid4().hex[:12]}:"
    empty_tables(_mysql_database)
    try:
        with running_system(_mysql_database, TEST_REDIS_URL, prefix) as running:
            yield running
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def anonymous_page(browser):
    """A new page, not signed in, at a desktop width; `page.console` collects its console
    messages and `page.errors` its uncaught exceptions."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.console, page.errors = [], []
    page.on("console", lambda message: page.console.append(message))
    page.on("pageerror", lambda error: page.errors.append(error))
    yield page
    fatal = fatal_console_messages(page.console) + [str(error) for error in page.errors]
    context.close()
    assert not fatal, f"console errors on the page: {fatal}"


@pytest.fixture
def page(anonymous_page, system):
    """A page signed in to `system` through /login."""
    sign_in(anonymous_page, system.url, system.token)
    return anonymous_page
