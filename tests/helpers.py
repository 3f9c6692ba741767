"""What the test modules share: where the test servers are, and storing lines for the app.

What the benchmarks use too is in txstream.testing and txstream.processes.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime

import pytest
from redis.cluster import RedisCluster
from sqlalchemy import make_url

from txstream import tokens
from txstream.keys import Keys
from txstream.processes import free_ports, wait_until
from txstream.rebuild_redis import RedisRebuild
from txstream.store import Store
from txstream.testing import ClusterMembership, PrivateRedis
from txstream.times import format_epoch
from txstream.transaction import Transaction
from txstream.wire import parse

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_DATABASE_URL = make_url(
    os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_test")
)
# This pytest run's own database: TEST_DATABASE_URL's name with a random suffix, so that
# two runs at once never share one. Created and dropped by conftest's `_mysql_database`.
TEST_DATABASE_URL = _DATABASE_URL.set(
    database=f"{_DATABASE_URL.database}_{secrets.token_hex(4)}"
).render_as_string(hide_password=False)

# The scripts and apps under test sign sessions with this (`import app` needs one).
TEST_SECRET_KEY = os.environ.setdefault("SECRET_KEY", "test-secret-" + secrets.token_hex(16))

BIGGEST = "999999999999999999.99"  # the largest amount a transaction can have


def service_unavailable(what: str, error: Exception) -> None:
    """Skip the test, or fail it when the services are required (CI)."""
    message = f"{what} is not answering: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (REQUIRE_SERVICES=1)")
    pytest.skip(message)


def line(user_id: int, amount: str, at: datetime, txn_id: str) -> str:
    """A wire line."""
    return f"{user_id},{amount},{format_epoch(at)},{txn_id}"


def seed(app, *lines: str) -> list[Transaction]:
    """Store wire lines as the subscriber does: rows and window totals, then Redis (whose
    derived state a subscriber has checked at its start)."""
    txns = [parse(text) for text in lines]
    config = app.config
    window_seconds = int(config["WINDOW_HOURS"] * 3600)
    engine = config.get("SEED_ENGINE", config["ENGINE"])  # the app's own may only read
    keys = Keys(config["KEY_PREFIX"])
    RedisRebuild(engine, config["REDIS"], keys, "tests").check()
    store = Store(engine, config["REDIS"], keys, window_seconds)
    committed = store.store(txns)
    assert len(committed.new) == len(txns)
    return txns


# Every type a Redis key can hold, and a value of each, as someone else might set a key.
KINDS = ("string", "list", "hash", "set", "zset", "stream")
_SET_KIND = {
    "string": lambda client, key: client.set(key, "x"),
    "list": lambda client, key: client.rpush(key, "x"),
    "hash": lambda client, key: client.hset(key, "x", "x"),
    "set": lambda client, key: client.sadd(key, "x"),
    "zset": lambda client, key: client.zadd(key, {"x": 1}),
    "stream": lambda client, key: client.xadd(key, {"x": "x"}),
}


def retype(client, key: str, kind: str) -> None:
    """Make `key` hold a value of type `kind` (one of KINDS), whatever it held: in one
    MULTI/EXEC, so that a running writer (a subscriber's heartbeat) cannot write its own
    type between the DEL and the new value."""
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        _SET_KIND[kind](pipe, key)
        pipe.execute()


def signed_in_client(app):
    """A test client of `app` that sends a valid bearer token and has a page session."""
    token = tokens.create(app.config["ENGINE"], f"test-{secrets.token_hex(6)}")
    client = sign_in(app.test_client(), token)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def sign_in(client, token: str):
    """`client`, signed in to the pages with `token` through the sign-in form."""
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"csrf": csrf, "token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def metric_samples(text: str) -> dict[tuple, float]:
    """Every sample of a Prometheus scrape: (name, sorted (label, value) pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def make_app(engine, client, key_prefix: str, **extra):
    """The web app on `engine` and Redis `client`, with this test's key prefix and `extra`
    settings on top."""
    from app import create_app  # here, not at the top: importing `app` builds an app

    return create_app(
        {
            "TESTING": True,
            "ENGINE": engine,
            "REDIS": client,
            "KEY_PREFIX": key_prefix,
            "SECRET_KEY": TEST_SECRET_KEY,
            **extra,
        }
    )


def assert_no_inline_code(page: str) -> None:
    """The page runs only files of this site (CSP default-src 'self'): no inline script or
    style, every script a file under /static/."""
    assert "style=" not in page and "<style" not in page
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, re.DOTALL)
    tags = re.findall(r"<script[^>]*>", page)
    assert all(body == "" for body in scripts) and len(scripts) == len(tags)
    assert all(re.fullmatch(r'<script src="/static/[a-z_]+\.js" defer>', tag) for tag in tags)


class OneNodeCluster(PrivateRedis):
    """A Redis Cluster of one master that holds every slot: quick to start, and a script or
    command on keys of two slots fails with CROSSSLOT as on any cluster."""

    def __init__(self, directory) -> None:
        port, bus_port = free_ports(2)
        super().__init__(directory, cluster=ClusterMembership(bus_port, 1000), port=port)

    def start(self) -> None:
        """Start, take every slot, and wait until the cluster says it is ok."""
        super().start()
        with self.client(socket_timeout=5) as client:
            if b"cluster_slots_assigned:16384" not in client.execute_command("CLUSTER", "INFO"):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_until(
                lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"),
                timeout=10,
                what="the one-node cluster's state to be ok",
            )

    def cluster_client(self, **kwargs) -> RedisCluster:
        """A redis-py cluster client of this node."""
        return RedisCluster.from_url(self.url, **kwargs)
