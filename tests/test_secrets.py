"""No process logs a secret: passwords in its URLs, in the user part or as query parameters.

The emitter, the subscriber and the web app run against a Redis with users
(deploy/redis.acl) and a MariaDB user with a password, so that they really log in with
the secrets; their whole output must not hold any of them.
"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import make_url, text

from tests.helpers import TEST_DATABASE_URL
from txstream.demo import answers_200
from txstream.processes import free_port, wait_until
from txstream.testing import (
    EMITTER_USER,
    SUBSCRIBER_USER,
    WEB_USER,
    emitter_args,
    wait_for_log,
    wait_until_stored,
)

pytestmark = pytest.mark.services

COUNT = 50


@pytest.fixture
def database_login(mysql_engine):
    """A MariaDB user with a password that may use this run's test database: (user, password)."""
    user, password = f"txstream_{secrets.token_hex(4)}", f"db-{secrets.token_hex(12)}"
    database = mysql_engine.dialect.identifier_preparer.quote(mysql_engine.url.database)
    with mysql_engine.begin() as conn:
        conn.execute(
            text("CREATE USER :user@'%' IDENTIFIED BY :password"),
            {"user": user, "password": password},
        )
        conn.execute(text(f"GRANT ALL ON {database}.* TO :user@'%'"), {"user": user})
    yield user, password
    with mysql_engine.begin() as conn:
        conn.execute(text("DROP USER :user@'%'"), {"user": user})


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_no_process_logs_a_password(acl_redis, database_login, mysql_engine, run, where):
    db_user, db_password = database_login
    database = make_url(TEST_DATABASE_URL).set(username=db_user)
    if where == "userinfo":
        database = database.set(password=db_password)
    else:
        database = database.update_query_dict({"password": db_password})

    def redis_url(user: str) -> str:
        if where == "userinfo":
            return acl_redis.url_for(user)
        password = acl_redis.passwords[user]
        return f"redis://{user}@127.0.0.1:{acl_redis.port}/0?password={password}"

    web_secret = secrets.token_hex(16)  # the web app's, once it signs sessions
    env = {
        "DATABASE_URL": database.render_as_string(hide_password=False),
        "TRANSPORT": "stream",
        "KEY_PREFIX": "txstream:",
        "STREAM": "transactions",
        "GROUP": "store",
        "SECRET_KEY": web_secret,
    }
    subscriber = run("sub_and_store.py", env={**env, "REDIS_URL": redis_url(SUBSCRIBER_USER)})
    wait_for_log(subscriber, r"reading .*; waiting for transactions")
    emitter = run(
        *emitter_args(COUNT, 5, 1, rate=0), env={**env, "REDIS_URL": redis_url(EMITTER_USER)}
    )
    assert emitter.wait() == 0, emitter.output
    wait_until_stored(mysql_engine, COUNT, [subscriber])
    assert subscriber.stop() == 0, subscriber.output
    port = free_port()
    web = run(
        *("-m", "flask", "--app", "app", "run", "--port", str(port)),
        env={**env, "REDIS_URL": redis_url(WEB_USER)},
    )
    # 200: both logins worked, so the app had both secrets in hand.
    wait_until(lambda: answers_200(f"http://127.0.0.1:{port}/healthz"), 30, "the web app")
    web.kill()

    hidden = [db_password, web_secret, *acl_redis.passwords.values()]
    masked = ":***@" if where == "userinfo" else "password=***"
    for script in (subscriber, emitter, web):
        assert script.output.count(masked) >= 1, script.output  # the URLs are logged...
        for secret in hidden:
            assert secret not in script.output  # ...without their secrets
