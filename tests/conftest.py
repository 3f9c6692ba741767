"""Shared fixtures: fast fakes (fakeredis, SQLite) and the real Redis and MariaDB.

Tests that need the real servers take `redis_client` / `mysql_engine` and are marked
`services`. They skip when a server does not answer, except with REQUIRE_SERVICES=1
(CI), where they fail. They use their own database (`txstream_test`), Redis db 15 and
a fresh key prefix and channel per test, so they never touch real data.
"""

from __future__ import annotations

import uuid

import fakeredis
import pytest
import redis
from sqlalchemy import delete, make_url, text
from sqlalchemy.exc import OperationalError

import config
import models
from tests.servers import TEST_DATABASE_URL, TEST_REDIS_URL, service_unavailable


@pytest.fixture
def fake_redis():
    """A fresh in-memory fakeredis client (bytes responses, like the real client)."""
    client = fakeredis.FakeRedis()
    yield client
    client.close()


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
    """The test database, created afresh once per test session."""
    url = make_url(TEST_DATABASE_URL)
    engine = models.make_engine(TEST_DATABASE_URL)
    try:
        server = models.make_engine(url.set(database="").render_as_string(hide_password=False))
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
        server.dispose()
        models.create_schema(engine)
    except OperationalError as exc:
        engine.dispose()
        service_unavailable(f"MariaDB at {config.mask_url(TEST_DATABASE_URL)}", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def mysql_engine(_mysql_database):
    """The real MariaDB test database, with empty tables."""
    with _mysql_database.begin() as conn:
        conn.execute(delete(models.transactions))
        conn.execute(delete(models.user_window_totals))
    return _mysql_database
