"""Run txstream's scripts as real processes in tests, and wait on conditions with deadlines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Script:
    """`python ARGS...` in the repository, its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

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

    def kill(self) -> None:
        """Test clean-up: SIGTERM (so it can stop what it started), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
