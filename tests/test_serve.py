"""`make serve` (txstream/serve.py): nginx in front of gunicorn, real processes.

gunicorn's sync workers alone were held by two half-sent requests (/healthz then took 31.7 s);
nginx reads whole requests first, and its own error answers carry the app's security headers.
"""

from __future__ import annotations

import http.client
import signal
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from app import create_app
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL
from txstream.processes import free_port, wait_healthy, wait_until
from txstream.serve import accepts
from txstream.testing import stream_env

pytestmark = pytest.mark.services

SLOW_CLIENTS, REQUESTS = 50, 20
HALF_REQUESTS = (  # half the headers; all the headers and half the body
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=",
)
NGINX_MADE = {  # what makes nginx itself answer, before gunicorn sees anything
    414: ("GET", "/" + "a" * 9000, {}),
    400: ("GET", "/healthz", {"X-Big": "a" * 9000}),
    413: ("POST", "/api/transactions", {"Content-Length": str(65 * 1024)}),
}


@pytest.fixture
def served(run, mysql_engine, key_prefix):
    """(the launcher, host, port): `python -m txstream.serve`, once /healthz answers."""
    port = free_port()
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, AUTH_FAIL_LIMIT="3/minute")
    server = run("-m", "txstream.serve", env={**env, "WEB_BIND": f"127.0.0.1:{port}"})
    wait_healthy(server, f"http://127.0.0.1:{port}", timeout=60)
    return server, "127.0.0.1", port


def _get(host: str, port: int, method: str, path: str, headers: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


def test_slow_clients_do_not_hold_the_workers(served):
    _server, host, port = served
    with ExitStack() as stack:
        for i in range(SLOW_CLIENTS):  # half a request each, never finished
            sock = stack.enter_context(socket.create_connection((host, port), timeout=10))
            sock.sendall(HALF_REQUESTS[i % len(HALF_REQUESTS)])
        took = []
        for _ in range(REQUESTS):
            start = time.monotonic()
            try:
                status = _get(host, port, "GET", "/healthz", {}).status
            except OSError:
                status = None  # timed out after 10 s: held
            took.append(time.monotonic() - start)
            assert status == 200
    assert max(took) < 1, f"slowest /healthz {max(took):.3f} s"


@pytest.mark.parametrize("status", sorted(NGINX_MADE))
def test_answers_nginx_makes_carry_the_apps_security_headers(served, status):
    _server, host, port = served
    expected = _app_headers()
    response = _get(host, port, *NGINX_MADE[status])
    assert response.status == status
    assert response.getheader("Server") in (None, "nginx")  # made by nginx, not the app
    for name, value in expected.items():
        assert response.headers.get_all(name) == [value], name


def test_the_apps_answers_carry_each_security_header_once(served):
    _server, host, port = served
    response = _get(host, port, "GET", "/healthz", {})
    assert response.status == 200
    for name, value in _app_headers().items():
        assert response.headers.get_all(name) == [value], name


def test_failed_authentication_is_counted_per_client_not_per_nginx(served):
    _server, host, port = served
    wrong = {"Authorization": "Bearer txs_" + "A" * 43}

    def status_from(source: str) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
        conn.request("GET", "/api/transactions", headers=wrong)
        status = conn.getresponse().status
        conn.close()
        return status

    statuses = [status_from("127.0.0.2") for _ in range(5)]  # over AUTH_FAIL_LIMIT 3/minute
    assert statuses[-1] == 429, statuses
    assert status_from("127.0.0.1") == 401  # another client: its own count


def _app_headers() -> dict[str, str]:
    """The headers that nginx's own answers must repeat, as the app sends them."""
    app = create_app({"TESTING": True, "AUTH": False})
    response = app.test_client().get("/no-such-page")
    names = ("Content-Security-Policy", "X-Content-Type-Options")
    return {name: response.headers[name] for name in names}


def _descendants(pid: int) -> set[int]:
    """The processes under `pid`, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.update(children)
        todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_stops_nginx_and_gunicorn(served):
    server, _host, _port = served
    children = _descendants(server.proc.pid)
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in children}
    assert any(name.startswith("nginx") for name in names), names
    server.proc.send_signal(signal.SIGINT)
    assert server.wait(30) == 0, server.output
    wait_until(lambda: not any(map(_alive, children)), 30, "nginx and gunicorn to exit")


def test_accepts_tells_when_a_unix_socket_listens(tmp_path):
    """serve.py waits on gunicorn's Unix socket (cheaper for nginx than a loopback port)."""
    path = tmp_path / "gunicorn.sock"
    assert not accepts(f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        assert accepts(f"unix:{path}")
