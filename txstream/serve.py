"""`make serve`: gunicorn behind nginx, started together and stopped together (Ctrl-C, SIGTERM).

gunicorn's sync workers serve one request each at a time, so a few clients sending half a
request would hold them all. nginx (deploy/nginx.conf) listens on WEB_BIND, reads whole
requests with timeouts, and passes them to gunicorn on a Unix socket in its own temporary
directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess  # nosec B404 # starts nginx by a fixed argument list
import sys
import tempfile
import time
from pathlib import Path

import config
from txstream import headers
from txstream.demo import interrupt, wait_for
from txstream.processes import ROOT, SERVE, Script, TimedOut

log = logging.getLogger(__name__)
CONF = ROOT / "deploy" / "nginx.conf"


def nginx_conf(listen: str, upstream: str, run_dir: Path, max_body: int) -> str:
    """deploy/nginx.conf with its @NAMES@ filled in; the security headers of nginx's own
    answers are the app's (txstream.headers), written in one place."""
    text = CONF.read_text()
    for name, value in {
        "LISTEN": listen,
        "UPSTREAM": upstream,
        "RUN_DIR": str(run_dir),
        "MAX_BODY": str(max_body),
        "CSP": headers.CONTENT_SECURITY_POLICY,
        "NOSNIFF": headers.NOSNIFF,
    }.items():
        text = text.replace(f"@{name}@", value)
    return text


def nginx_binary() -> str:
    """$NGINX, else nginx on the PATH, else Debian's /usr/sbin/nginx."""
    return os.environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"


def accepts(address: str) -> bool:
    """Whether HOST:PORT or unix:PATH accepts a connection (the app answers 503 while a
    server is down)."""
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(address.removeprefix("unix:"))
        else:
            host, _, port = address.rpartition(":")
            socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> int:
    """Start gunicorn, then nginx in front of it; stop both when either exits or on a signal."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, interrupt)
    settings = config.load(os.environ)
    listen = os.environ.get("WEB_BIND") or "127.0.0.1:8000"
    run_dir = Path(tempfile.mkdtemp(prefix="txstream-nginx-"))
    run_dir.chmod(0o755)  # nginx's workers (user nobody when started as root) write under it
    # A Unix socket, not a loopback port: no TCP handshake, nor TIME_WAIT, a request
    # (gunicorn's sync workers close each connection), and nothing else can take it.
    upstream = f"unix:{run_dir / 'gunicorn.sock'}"
    (run_dir / "nginx.conf").write_text(
        nginx_conf(listen, upstream, run_dir, settings.max_content_length)
    )
    children: list[subprocess.Popen] = []
    status = 0
    try:
        # Each in a session of its own: Ctrl-C reaches this process, which stops both.
        # PROXY_HOPS: the app takes the client's address from nginx's X-Forwarded-For.
        env = {"WEB_BIND": upstream, "PROXY_HOPS": str(settings.proxy_hops or 1)}
        gunicorn = Script(*SERVE, env=env, echo_as="gunicorn", new_session=True)
        children.append(gunicorn.proc)
        wait_for(lambda: accepts(upstream), "gunicorn listening", 60, [gunicorn])
        nginx = subprocess.Popen(  # nosec B603 # nginx, with the configuration written above
            [nginx_binary(), "-e", "stderr", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf")],
            start_new_session=True,
        )
        children.append(nginx)
        wait_for(lambda: nginx.poll() is not None or accepts(listen), "nginx", 30, [gunicorn])
        if nginx.poll() is None:
            log.info("serving on http://%s/ (nginx, in front of gunicorn on %s)", listen, upstream)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        log.error(
            "%s exited; stopping", "gunicorn" if gunicorn.proc.poll() is not None else "nginx"
        )
        status = 1
    except KeyboardInterrupt:
        log.info("stopping nginx and gunicorn")
    except OSError as exc:  # no nginx: README, "Serve with gunicorn"
        log.error("cannot start nginx (apt-get install nginx-light, or set NGINX): %s", exc)
        status = 1
    except (RuntimeError, TimedOut) as exc:
        log.error("%s", exc)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):  # nginx first: no new requests, then gunicorn
            _stop(child)
        shutil.rmtree(run_dir, ignore_errors=True)
    return status


def _stop(child: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (nginx and gunicorn then stop their workers), SIGKILL after `timeout` s."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
