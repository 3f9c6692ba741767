"""`make serve` (txstream/serve.py): nginx in front of gunicorn, real processes.

gunicorn's sync workers alone were held by two half-sent requests (/healthz then took 31.7 s);
nginx reads whole requests first, and its own error answers carry the app's security headers.
`make serve` also runs as an ordinary user (nobody), writing nothing outside its own directory.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess  # nosec B404 # setpriv, by a fixed argument list
import sys
import sysconfig
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from app import create_app
from tests.helpers import TEST_DATABASE_URL, TEST_REDIS_URL
from txstream import headers
from txstream.processes import ROOT, Script, free_port, wait_healthy, wait_until
from txstream.serve import CONF, accepts, nginx_conf
from txstream.testing import stream_env

pytestmark = pytest.mark.services

SLOW_CLIENTS, REQUESTS = 50, 20
HALF_REQUESTS = (  # half the headers; all the headers and half the body
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=",
)
NGINX_MADE = {  # what makes nginx itself answer, before gunicorn sees anything
    414: ("GET", "/" + "a" * 9000, {}),
    400: ("GET", "/healthz", {"X-Big": "a" * 64 * 1024}),  # no 431: nginx has none
    413: ("POST", "/api/transactions", {"Content-Length": str(65 * 1024)}),
}


def serve_env(key_prefix: str, port: int) -> dict[str, str]:
    """`make serve`'s environment for this test: the test servers, nginx on `port`."""
    env = stream_env(TEST_REDIS_URL, TEST_DATABASE_URL, key_prefix, AUTH_FAIL_LIMIT="3/minute")
    return {**env, "WEB_BIND": f"127.0.0.1:{port}"}


@pytest.fixture
def served(run, mysql_engine, key_prefix):
    """(the launcher, host, port): `python -m txstream.serve`, once /healthz answers."""
    port = free_port()
    server = run("-m", "txstream.serve", env=serve_env(key_prefix, port))
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


def test_nginx_conf_takes_the_security_headers_from_the_app(monkeypatch, tmp_path):
    monkeypatch.setattr(headers, "CONTENT_SECURITY_POLICY", "default-src 'none'")
    text = nginx_conf("127.0.0.1:1", "127.0.0.1:2", tmp_path, 1024)
    assert "add_header Content-Security-Policy \"default-src 'none'\" always;" in text
    assert 'add_header X-Content-Type-Options "nosniff" always;' in text
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not re.findall(r"@[A-Z_]+@", "\n".join(directives))  # every name filled in
    assert "default-src" not in CONF.read_text()  # written once: in txstream/headers.py


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


def _ctrl_c_stops_everything(server: Script) -> None:
    """Ctrl-C (SIGINT) stops `make serve`: it exits 0, and nginx and gunicorn with it."""
    children = _descendants(server.proc.pid)
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in children}
    assert any(name.startswith("nginx") for name in names), names
    server.proc.send_signal(signal.SIGINT)
    assert server.wait(30) == 0, server.output
    wait_until(lambda: not any(map(_alive, children)), 30, "nginx and gunicorn to exit")


def test_ctrl_c_stops_nginx_and_gunicorn(served):
    server, _host, _port = served
    _ctrl_c_stops_everything(server)


# --- as an ordinary user ------------------------------------------------------------------

SKIPPED_IN_THE_COPY = (".git", ".venv", "var", ".env", "__pycache__", ".*_cache")
NOT_NEEDED_TO_RUN = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "__pycache__")


def _as_user(name: str) -> tuple[str, ...]:
    """The command prefix that runs a program as user `name`, without any group or
    capability of root's."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    user = pwd.getpwnam(name)
    return setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"


def _readable_copy(source: Path, target: Path, ignore) -> None:
    """`source` copied to `target`, every file readable and every folder open to all."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*ignore), symlinks=True)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o055 if path.is_dir() else 0o044))


def _python_for(as_user: tuple[str, ...], where: Path) -> tuple[tuple[str, ...], dict]:
    """(command, environment): this Python with this run's packages, as the user of
    `as_user`. When that user may not read this interpreter (pyenv's under /root, say),
    a copy of it and its standard library in `where`, the packages on PYTHONPATH."""
    same = f"import sys, flask, gunicorn, redis; sys.exit(sys.hexversion != {sys.hexversion})"
    probe = [*as_user, sys.executable, "-c", same]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:  # nosec B603
        return (*as_user, sys.executable), {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for folder in ("bin", "lib"):
        (where / folder).mkdir(parents=True)
    shutil.copy2(Path(sysconfig.get_config_var("BINDIR")) / version, where / "bin")
    for library in Path(sysconfig.get_config_var("LIBDIR")).glob("libpython*.so*"):
        shutil.copy2(library, where / "lib", follow_symlinks=False)
    _readable_copy(
        Path(sysconfig.get_paths()["stdlib"]), where / "lib" / version, NOT_NEEDED_TO_RUN
    )
    packages = dict.fromkeys(sysconfig.get_paths()[kind] for kind in ("purelib", "platlib"))
    env = {
        "PYTHONHOME": str(where),
        "PYTHONPATH": os.pathsep.join(packages),
        "LD_LIBRARY_PATH": str(where / "lib"),  # its libpython
    }
    return (*as_user, str(where / "bin" / version)), env


def _uids(pid: int) -> set[int]:
    """The real, effective, saved and file-system user ids of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    return set(map(int, re.search(r"^Uid:(.*)$", status, re.MULTILINE).group(1).split()))


def test_serve_runs_as_an_ordinary_user(mysql_engine, key_prefix):
    """As `nobody`: nginx ignores no `user` directive (there is none), and opens nothing of
    its own outside serve's temporary directory (no /var/log/nginx, no /run/nginx.pid)."""
    if os.geteuid() != 0:
        pytest.skip("not root: every other test of this module runs serve as an ordinary user")
    as_nobody = _as_user("nobody")
    with tempfile.TemporaryDirectory(prefix="txstream-as-nobody-") as temporary:
        where = Path(temporary)
        where.chmod(0o755)
        _readable_copy(ROOT, where / "repo", SKIPPED_IN_THE_COPY)
        python, python_env = _python_for(as_nobody, where / "python")
        port = free_port()
        env = {**serve_env(key_prefix, port), **python_env, "HOME": str(where)}
        server = Script("-m", "txstream.serve", env=env, cwd=where / "repo", python=python)
        try:
            wait_healthy(server, f"http://127.0.0.1:{port}", timeout=60)
            processes = {server.proc.pid, *_descendants(server.proc.pid)}
            assert {uid for pid in processes for uid in _uids(pid)} == {
                pwd.getpwnam("nobody").pw_uid
            }
            _ctrl_c_stops_everything(server)
        finally:
            server.kill()


def test_accepts_tells_when_a_unix_socket_listens(tmp_path):
    """serve.py waits on gunicorn's Unix socket (cheaper for nginx than a loopback port)."""
    path = tmp_path / "gunicorn.sock"
    assert not accepts(f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        assert accepts(f"unix:{path}")
