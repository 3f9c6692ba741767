"""schemathesis against the live app (gunicorn) on the real MariaDB and Redis, with a token.

Every operation of /api/openapi.json gets requests made from its schema, valid ones and
invalid ones, the same ones every run (derandomized); every response must match the
document (status, content type, headers, body) and none may be a 5xx.
"""

from __future__ import annotations

import http.client
import json
import secrets
import urllib.request
from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.helpers import BIGGEST, TEST_DATABASE_URL, TEST_REDIS_URL, TEST_SECRET_KEY, line
from txstream import live, openapi, queries, tokens
from txstream.demo import answers_200
from txstream.keys import Keys
from txstream.processes import free_port, wait_until
from txstream.store import Store
from txstream.times import MAX_MICROS, from_micros, utcnow
from txstream.transaction import TXN_ID
from txstream.wire import parse

pytestmark = pytest.mark.services

EXAMPLES = 60  # requests per operation and mode, at most: about 600 in all, ~10 s
SERVE = ("-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app")  # as `make serve`

# `before` and `after` take only cursors the app made, which no pattern can describe: schemathesis
# makes them as the app does, for any position.
_positions = st.builds(
    queries.Position,
    st.integers(1, MAX_MICROS - 1).map(from_micros),
    st.from_regex(TXN_ID, fullmatch=True),
)
schemathesis.openapi.format(openapi.CURSOR_FORMAT, _positions.map(queries.encode_cursor))
schemathesis.openapi.format(
    openapi.LIVE_POSITION_FORMAT, st.integers(0, 2**63 - 1).map(live.encode_position)
)


@pytest.fixture
def server(run, mysql_engine, redis_client, key_prefix):
    """The app under gunicorn on the test database and Redis, with a few transactions."""
    now = utcnow()
    lines = [
        line(1 + i % 3, f"{i * 7 - 20}.{i:02d}", now - timedelta(hours=i), f"t{i}")
        for i in range(12)
    ]
    lines.append(line(1, BIGGEST, now, "biggest"))
    Store(mysql_engine, redis_client, Keys(key_prefix), 6 * 3600).store(list(map(parse, lines)))
    bind = f"127.0.0.1:{free_port()}"
    env = {
        "DATABASE_URL": TEST_DATABASE_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "KEY_PREFIX": key_prefix,
        "SECRET_KEY": TEST_SECRET_KEY,
        "RATE_LIMIT": "100000/minute",
        # schemathesis sends bad credentials on purpose, hundreds of times: not an attack
        "AUTH_FAIL_LIMIT": "100000/minute",
        "WEB_BIND": bind,
        "WEB_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
    }
    gunicorn = run(*SERVE, env=env)
    url = f"http://{bind}"

    def healthy() -> bool:
        assert gunicorn.proc.poll() is None, f"gunicorn exited:\n{gunicorn.output}"
        return answers_200(f"{url}/healthz")

    wait_until(healthy, 30, f"{url}/healthz")
    yield url, tokens.create(mysql_engine, f"contract-{secrets.token_hex(4)}")
    assert "Traceback" not in gunicorn.output, gunicorn.output


def test_the_live_app_keeps_its_openapi_contract(server):
    url, token = server
    with urllib.request.urlopen(f"{url}/api/openapi.json", timeout=10) as response:
        document = json.load(response)
    config = schemathesis.Config.from_dict(
        {
            "base-url": url,
            "auth": {"openapi": {"bearer": {"bearer": token}}},  # the document's scheme
            # Unknown query parameters are ignored, not refused: schemathesis would
            # count each as an invalid request that was accepted.
            "generation": {"allow-extra-parameters": False},
        }
    )
    # From the dict, not the URL: schemathesis leaves out the operation it loaded from.
    schema = schemathesis.openapi.from_dict(document, config=config)
    calls: Counter = Counter()
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in _modes(document, operation.path):
            for response in _exercise(operation, mode):
                calls[operation.label, mode] += 1
                statuses[response.status_code] += 1

    for path, methods in document["paths"].items():
        # Without parameters there is one request to make; with them, many.
        least = EXAMPLES // 2 if methods["get"].get("parameters") else 1
        for mode in _modes(document, path):
            assert calls[f"GET {path}", mode] >= least, (path, mode, calls)
    assert statuses[200] >= 100 and statuses[400] >= 30 and statuses[401] >= 10, statuses


def _exercise(operation, mode: GenerationMode) -> list:
    """Send `operation` the requests schemathesis makes in `mode`; check every response."""
    responses = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        responses.append(case.call_and_validate())  # with every check schemathesis has

    check()
    return responses


def _modes(document: dict, path: str) -> list[GenerationMode]:
    """Valid requests; and invalid ones too where there is something to get wrong."""
    operation = document["paths"][path]["get"]
    needs_token = operation.get("security", document["security"]) != []
    if operation.get("parameters") or needs_token:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def test_the_live_app_refuses_long_bodies_unread(server):
    """Under gunicorn, with a real client: a body declared longer than MAX_CONTENT_LENGTH
    gets its 413 though none of it is sent; a chunked one, at the limit."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    declared = http.client.HTTPConnection(host, int(port), timeout=10)
    declared.putrequest("POST", "/login")
    declared.putheader("Content-Type", "application/x-www-form-urlencoded")
    declared.putheader("Content-Length", str(400 * 1024 * 1024))
    declared.endheaders()  # and not a byte of the body: reading it would time out
    response = declared.getresponse()
    assert response.status == 413 and b"65536 bytes at most" in response.read()
    chunked = http.client.HTTPConnection(host, int(port), timeout=10)
    body = (b"A" * 1024 for _ in range(80))  # 80 KiB
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    chunked.request("POST", "/login", body=body, headers=headers, encode_chunked=True)
    assert chunked.getresponse().status == 413
