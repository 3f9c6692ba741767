"""Reads from a MariaDB replica (DATABASE_READ_URL), and the primary's when it is unfit.

A private primary and a private replica (GTID replication) on loopback ports. To tell
which server answered, the replica holds rows of its own: written on it directly, never
on the primary, as a local write (`sql_log_bin=0`) that replication does not touch. An
answer that holds them was read from the replica; one without them, from the primary.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, make_url

import models
from tests.helpers import line, make_app, seed, service_unavailable, signed_in_client
from txstream import openapi, tokens
from txstream.keys import Keys
from txstream.processes import wait_until
from txstream.replica import (
    BEHIND,
    DOWN,
    HEADER,
    NOT_A_REPLICA,
    STOPPED,
    ReadRouter,
    Verdict,
    judge,
)
from txstream.replica import router as current_router
from txstream.testing import PrivateMariaDB, ServerMissing, replicated
from txstream.times import utcnow

USER = 7
ONLY_ON_REPLICA = "only-on-the-replica"  # a txn_id the primary never has
SWITCH_WAIT = 10  # seconds: the router checks the replica about once a second
# Every read route of the web app, and a text in its answer that only the replica holds.
READ_ROUTES = [
    (f"/api/users/{USER}/sum?hours=6", '"count":2'),
    (f"/api/users/{USER}/transactions", ONLY_ON_REPLICA),
    ("/api/transactions", ONLY_ON_REPLICA),
    (f"/api/users/{USER}/windows", "2001-01-01T00:00:00.000000Z"),
    ("/api/live", ONLY_ON_REPLICA),
    (f"/users/{USER}", ONLY_ON_REPLICA),
    ("/", ONLY_ON_REPLICA),
]
PROBE = f"/api/users/{USER}/transactions"


@pytest.fixture
def servers(tmp_path, _mariadb_template):
    """A primary with txstream's schema and a replica of it, caught up, and the URL the web
    app reads the replica by, as a user with only the privileges the README asks for:
    (primary, replica, read_url)."""
    try:
        with replicated(tmp_path, _mariadb_template) as (primary, replica):
            password = secrets.token_hex(12)
            with primary.connect(autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT SELECT ON {primary.database}.* TO 'reader'@'127.0.0.1'")
                cur.execute("GRANT SLAVE MONITOR ON *.* TO 'reader'@'127.0.0.1'")
            replica.catch_up(primary)
            login = f"reader:{password}@127.0.0.1:{replica.port}"
            yield primary, replica, f"mysql+pymysql://{login}/{replica.database}"
    except ServerMissing as exc:
        service_unavailable("A private MariaDB", exc)


@pytest.fixture
def system(servers, redis_client, key_prefix):
    """The web app on the primary, reading from the replica; a transaction of USER on both
    servers, and one more and a window total on the replica alone: (app, client)."""
    primary, replica, read_url = servers
    engine = models.make_engine(primary.url, reads_only=True)
    writer = models.make_engine(primary.url)
    app = make_app(
        engine,
        redis_client,
        key_prefix,
        DATABASE_READ_URL=read_url,
        READ_MAX_LAG_S=5.0,
        WINDOW_HOURS=Decimal(6),
        RATE_LIMIT="100000/minute",
        SEED_ENGINE=writer,
    )
    now = utcnow()
    seed(app, line(USER, "10.00", now - timedelta(minutes=1), "on-both"))
    replica.catch_up(primary)
    write_on_replica_only(replica, now)
    yield app, signed_in_client(app)
    engine.dispose()
    writer.dispose()
    router_of(app).replica.dispose()


def write_on_replica_only(replica: PrivateMariaDB, now: datetime) -> None:
    """A transaction and a window total of USER that only the replica holds."""
    with replica.connect(database=replica.database, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")  # a local write: never replicated
            cur.execute(
                "INSERT INTO transactions (txn_id, user_id, amount, ts, received_at) "
                "VALUES (%s, %s, 5.00, %s, %s)",
                (ONLY_ON_REPLICA, USER, now - timedelta(minutes=2), now),
            )
            cur.execute(
                "INSERT INTO user_window_totals VALUES (%s, '2001-01-01', 1, 1.00, 1.00, 1.00, %s)",
                (USER, now),
            )


def router_of(app) -> ReadRouter:
    with app.app_context():
        return current_router()


def from_replica(client, path: str, only_there: str) -> bool:
    """Whether `path` is answered from the replica; it must be answered (200) either way,
    with the replica's rows exactly when it carries the lag header."""
    response = client.get(path)
    assert response.status_code == 200, response.text
    read_there = only_there in response.text
    assert (HEADER in response.headers) == read_there, (path, dict(response.headers))
    return read_there


def switch_logged(caplog, text: str) -> bool:
    return any(r.name == "txstream.replica" and text in r.getMessage() for r in caplog.records)


@pytest.mark.services
def test_reads_come_from_the_replica_with_its_lag(system):
    app, client = system
    for path, only_there in READ_ROUTES:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert only_there in response.text, path
        assert response.headers[HEADER] == "0", path  # caught up
    total = client.get(f"/api/users/{USER}/sum?hours=6").json
    assert (total["count"], total["sum"]) == (2, "15.00")
    # Redis reads and the System page's health are none of the replica's.
    assert HEADER not in client.get(f"/api/users/{USER}/recent").headers
    app.config["REDIS"].delete(app.config["KEYS"].derived())  # as if Redis had lost it...
    assert from_replica(client, f"/api/users/{USER}/recent", ONLY_ON_REPLICA)  # ...a read
    answer = client.get("/api/system")
    assert HEADER not in answer.headers
    assert answer.json["replica"] == {"reads_from": "replica", "lag_s": 0, "reason": None}
    assert answer.json["database"] == "ok"
    assert "the replica, 0 s behind" in client.get("/system").text


def test_the_openapi_document_names_the_header_on_exactly_the_reads_that_may_use_the_replica(
    app,
):
    spec = openapi.document(app.config["WINDOW_HOURS"])
    documented = {
        path
        for path, methods in spec["paths"].items()
        if HEADER in methods["get"]["responses"]["200"].get("headers", {})
    }
    read_from_replica = {
        "/api/users/{user_id}/sum",
        "/api/users/{user_id}/transactions",
        "/api/transactions",
        "/api/users/{user_id}/windows",
        "/api/live",
    }
    while_redis_rebuilds = {"/api/users/{user_id}/recent"}  # tested above
    assert documented == read_from_replica | while_redis_rebuilds
    api_routes = {re.sub(r"\?.*", "", path) for path, _ in READ_ROUTES if path.startswith("/api/")}
    assert api_routes == {path.replace("{user_id}", str(USER)) for path in read_from_replica}


@pytest.mark.services
def test_a_token_revoked_on_the_primary_fails_at_once_while_the_replica_still_has_it(
    system, servers, redis_client, key_prefix
):
    app, client = system
    primary, replica, _ = servers
    token = tokens.create(app.config["ENGINE"], "revoked-soon")
    headers = {"Authorization": f"Bearer {token}"}
    replica.catch_up(primary)
    assert app.test_client().get(PROBE, headers=headers).status_code == 200  # found, cached
    with primary.connect(database=primary.database, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")  # as if the replica had not got it yet
            cur.execute("DELETE FROM api_tokens WHERE name = 'revoked-soon'")
    tokens.announce_revocation(redis_client, Keys(key_prefix))

    assert app.test_client().get(PROBE, headers=headers).status_code == 401
    assert from_replica(client, PROBE, ONLY_ON_REPLICA)  # the replica is read all the same
    with replica.connect(database=replica.database) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM api_tokens WHERE name = 'revoked-soon'")
        assert cur.fetchone() == (1,)


@pytest.mark.services
def test_a_replica_too_far_behind_is_left_until_it_catches_up(system, servers, caplog):
    app, client = system
    primary, replica, _ = servers
    caplog.set_level(logging.INFO, logger="txstream.replica")
    assert from_replica(client, PROBE, ONLY_ON_REPLICA)

    # The replica applies each change an hour late; a change stamped a minute ago is then
    # a minute behind as soon as it arrives.
    replica.replicate(primary, delay=3600)
    with primary.connect(database=primary.database, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SET SESSION timestamp = UNIX_TIMESTAMP() - 60")
            cur.execute("INSERT INTO settings VALUES ('lag-probe', 'x')")
    wait_until(lambda: (replica.replication_lag() or 0) > 5, SWITCH_WAIT, "the replica to lag")

    wait_until(lambda: not from_replica(client, PROBE, ONLY_ON_REPLICA), SWITCH_WAIT, "primary")
    assert switch_logged(caplog, "reads go to the primary now")
    assert switch_logged(caplog, "s behind (READ_MAX_LAG_S=5)")
    shown = client.get("/api/system").json["replica"]
    assert shown["reads_from"] == "primary" and shown["reason"] == BEHIND
    assert shown["lag_s"] >= 60

    replica.replicate(primary, delay=0)
    wait_until(lambda: from_replica(client, PROBE, ONLY_ON_REPLICA), SWITCH_WAIT, "replica")
    assert switch_logged(caplog, "reads go to the replica")


@pytest.mark.services
def test_a_replica_that_stops_replicating_is_not_read(system, servers, caplog):
    app, client = system
    primary, replica, _ = servers
    assert from_replica(client, PROBE, ONLY_ON_REPLICA)
    with replica.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("STOP SLAVE SQL_THREAD")
    wait_until(lambda: not from_replica(client, PROBE, ONLY_ON_REPLICA), SWITCH_WAIT, "primary")
    assert switch_logged(caplog, "its replication is stopped")
    assert client.get("/api/system").json["replica"]["reason"] == STOPPED


@pytest.mark.services
def test_a_replica_killed_mid_run_is_left_at_once_and_read_again_once_back(system, servers, caplog):
    app, client = system
    primary, replica, read_url = servers
    caplog.set_level(logging.INFO, logger="txstream.replica")
    router = router_of(app)
    assert from_replica(client, PROBE, ONLY_ON_REPLICA)
    frozen = time.monotonic()
    router.clock = lambda: frozen  # no check until it thaws: the replica still looks fit

    replica.kill()
    for path, only_there in READ_ROUTES:  # the first read fails, and goes to the primary
        assert not from_replica(client, path, only_there), path
    assert switch_logged(caplog, "a read failed")
    switches = [r for r in caplog.records if "reads go to the primary now" in r.getMessage()]
    assert len(switches) == 1  # once, not once per request
    assert client.get("/api/system").json["replica"]["reason"] == DOWN
    assert "the primary: replica down" in client.get("/system").text
    assert client.get("/healthz").status_code == 200  # the primary is all it needs
    assert make_url(read_url).password not in caplog.text and "reader:***@" in caplog.text

    replica.start()
    router.clock = time.monotonic
    wait_until(lambda: from_replica(client, PROBE, ONLY_ON_REPLICA), SWITCH_WAIT, "replica")
    assert switch_logged(caplog, "reads go to the replica")


@pytest.mark.services
def test_a_replica_that_cannot_be_reached_leaves_every_read_on_the_primary(
    mysql_engine, redis_client, key_prefix, closed_port, caplog
):
    caplog.set_level(logging.INFO)
    app = make_app(
        mysql_engine,
        redis_client,
        key_prefix,
        DATABASE_READ_URL=f"mysql+pymysql://reader:s3cret-pw@127.0.0.1:{closed_port}/x",
        READ_MAX_LAG_S=5.0,
    )
    client = signed_in_client(app)
    for path, _ in READ_ROUTES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert HEADER not in response.headers
    assert switch_logged(caplog, "its status cannot be read")
    assert "s3cret-pw" not in caplog.text and "reader:***@" in caplog.text
    router_of(app).replica.dispose()


@pytest.mark.services
def test_the_replica_status_is_read_at_most_once_a_second(mysql_engine):
    # The shared server is no replica: its status says so, as a real one's would say more.
    engine = models.make_engine(mysql_engine.url.render_as_string(hide_password=False))
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    now = [100.0]
    router = ReadRouter(engine, 5.0, clock=lambda: now[0])
    for _ in range(50):
        assert router.lag() is None
    assert statements.count("SHOW ALL SLAVES STATUS") == 1
    assert router.verdict.reason == NOT_A_REPLICA
    now[0] += 0.99
    router.lag()
    assert statements.count("SHOW ALL SLAVES STATUS") == 1
    now[0] += 0.01
    router.lag()
    assert statements.count("SHOW ALL SLAVES STATUS") == 2
    engine.dispose()


def _status(*lags):
    return [
        {"Connection_name": f"c{i}", "Seconds_Behind_Master": lag} for i, lag in enumerate(lags)
    ]


@pytest.mark.parametrize(
    ("status", "max_lag", "expected"),
    [
        (_status(0), 5, (0, None)),
        (_status(5), 5, (5, None)),
        (_status(6), 5, (6, BEHIND)),
        (_status(1), 0.5, (1, BEHIND)),
        (_status(None), 5, (None, STOPPED)),
        (_status(0, 7), 5, (7, BEHIND)),  # multi-source: the worst connection counts
        (_status(0, None), 5, (None, STOPPED)),
        ([], 5, (None, NOT_A_REPLICA)),
    ],
)
def test_a_replica_is_fit_while_each_connection_runs_at_most_the_max_lag_behind(
    status, max_lag, expected
):
    verdict = judge(status, max_lag)
    assert (verdict.lag, verdict.reason) == expected
    assert verdict.fit == (expected[1] is None)
    assert isinstance(verdict, Verdict)
