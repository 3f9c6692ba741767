"""Redis over TLS: `rediss://` URLs that check the server's certificate, for every process."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
import redis

from tests.helpers import TEST_DATABASE_URL
from txstream.testing import (
    assert_recent_lists_match_db,
    assert_stored_exactly,
    emitted,
    emitter_args,
    make_tls_files,
    stream_env,
    wait_for_log,
    wait_until_stored,
)

pytestmark = pytest.mark.services

COUNT, USERS, SEED = 200, 10, 5


@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_emitter_and_subscriber_store_over_tls(tls_redis, mysql_engine, run, key_prefix, transport):
    url = tls_redis.url
    assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url
    env = stream_env(url, TEST_DATABASE_URL, key_prefix, TRANSPORT=transport)
    subscriber = run("sub_and_store.py", env=env)
    wait_for_log(subscriber, r"reading .*; waiting for transactions")
    emitter = run(*emitter_args(COUNT, USERS, SEED, rate=0), env=env)
    assert emitter.wait() == 0, emitter.output
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    assert subscriber.stop() == 0, subscriber.output
    assert_stored_exactly(mysql_engine, emitted(COUNT, USERS, SEED))

    from app import create_app  # here, not at the top: importing `app` builds an app

    web = create_app(
        {"TESTING": True, "ENGINE": mysql_engine, "REDIS_URL": url, "KEY_PREFIX": key_prefix}
    )
    assert web.test_client().get("/healthz").json == {"redis": "ok", "database": "ok"}
    assert_recent_lists_match_db(mysql_engine, web.config["REDIS"], key_prefix)


def test_a_certificate_from_another_authority_is_refused(tls_redis, tmp_path):
    """The URL's checks are real: the same server is refused when another CA is expected."""
    other = make_tls_files(tmp_path / "other")
    verify = urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": other.ca})
    with redis.Redis.from_url(f"rediss://127.0.0.1:{tls_redis.port}/0?{verify}") as client:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            client.ping()


def test_plain_connections_are_refused(tls_redis):
    with redis.Redis.from_url(f"redis://127.0.0.1:{tls_redis.port}/0", socket_timeout=5) as client:
        with pytest.raises(redis.ConnectionError):
            client.ping()
