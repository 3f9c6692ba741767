"""Child processes for the demo, the tests and the benchmarks; waiting with deadlines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess  # nosec B404 # starts the scripts, by fixed argument lists
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: where the scripts are
SERVE = ("-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app")  # as `make serve`


class TimedOut(AssertionError):
    """A condition did not hold in time (an AssertionError, so that a test fails)."""


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """`count` different free ports on 127.0.0.1 (all held open until all are chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02
) -> object:
    """Poll `condition` until it returns something truthy; `TimedOut` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Script:
    """`python ARGS...` in the repository (or `cwd`), its output collected line by line.

    `env` is added to this process's environment. `echo_as`: print each line with this
    name in front instead of keeping it (the demo runs for hours). `new_session`: start
    it in a session of its own, so that Ctrl-C reaches only the parent, which stops it.
    `python`: the command that runs Python, when not this one (e.g. as another user).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str],
        cwd: Path = ROOT,
        echo_as: str | None = None,
        new_session: bool = False,
        python: Sequence[str] = (sys.executable,),
    ) -> None:
        self.name = echo_as or " ".join(args)  # for messages
        self.echo_as = echo_as
        self.lines: list[str] = []
        self.proc = subprocess.Popen(  # nosec B603 # this Python and the repository's scripts
            [*python, *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                if self.echo_as is None:
                    self.lines.append(line.rstrip("\n"))
                else:
                    print(f"[{self.echo_as:>10}] {line}", end="", flush=True)

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20) -> re.Match:
        """The first output line matching `pattern`, waiting for it up to `timeout` s."""
        regex = re.compile(pattern)

        def find():
            if self.proc.poll() is not None and not self._reader.is_alive():
                matches = [m for m in map(regex.search, self.lines) if m]
                if not matches:
                    raise AssertionError(f"process exited without {pattern!r}:\n{self.output}")
            return next((m for m in map(regex.search, list(self.lines)) if m), None)

        return wait_until(find, timeout, f"{pattern!r} in the output of {self.proc.args}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send `sig` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.proc.args} did not exit:\n{self.output}") from None
        self._reader.join(5)
        return code

    def wait_ok(self, timeout: float = 60) -> None:
        """Wait for the process to exit; fail with its output unless it exited 0."""
        code = self.wait(timeout)
        if code != 0:
            raise AssertionError(f"{self.proc.args} exited with {code}:\n{self.output}")

    def kill(self, timeout: float = 15) -> None:
        """Clean-up: SIGTERM (so it can stop what it started), SIGKILL after `timeout` s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_web_app(
    env: dict[str, str], command: tuple[str, ...] = SERVE, cwd: Path = ROOT
) -> tuple[Script, str]:
    """(the process, its base URL): the web app under gunicorn (or `command`, e.g.
    txstream/serve.py's nginx in front of it), with `env`, on a free local port, run from
    the repository `cwd`; `wait_healthy` waits for it to answer."""
    bind = f"127.0.0.1:{free_port()}"
    return Script(*command, env={**env, "WEB_BIND": bind}, cwd=cwd), f"http://{bind}"


def wait_healthy(server: Script, url: str, timeout: float = 30) -> None:
    """Wait until `url`/healthz answers 200; fail with the server's output if it exits."""
    health = f"{url}/healthz"

    def healthy() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"the web app exited:\n{server.output}")
        try:
            # bandit B310: an http:// URL made by start_web_app
            with urllib.request.urlopen(health, timeout=1) as response:  # nosec B310
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout, health)


@contextmanager
def web_app(
    env: dict[str, str], timeout: float = 30, command: tuple[str, ...] = SERVE, cwd: Path = ROOT
) -> Iterator[tuple[Script, str]]:
    """(the process, its base URL): the web app (`start_web_app`), once /healthz answers
    200; stopped on the way out."""
    server, url = start_web_app(env, command, cwd)
    try:
        wait_healthy(server, url, timeout)
        yield server, url
    finally:
        server.stop()
