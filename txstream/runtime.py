"""What the long-running processes share: a clean stop on signals, and retrying with backoff."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class GiveUp(RuntimeError):
    """A retried operation still failed when the process was asked to stop."""


class StopFlag:
    """Set by SIGINT (Ctrl-C) or SIGTERM, so that loops end at a safe point."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def install(self) -> StopFlag:
        """Catch SIGINT and SIGTERM from now on."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.set()

    def set(self) -> None:
        """Ask the loops to stop."""
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early when stopped; True if stopped."""
        return self._event.wait(max(seconds, 0))


class Backoff:
    """Capped exponential delays: 0.1 s, 0.2 s, 0.4 s, ... up to `cap` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.next = first

    def delay(self) -> float:
        """The delay before the next attempt (doubling each time, up to the cap)."""
        delay, self.next = self.next, min(self.next * 2, self.cap)
        return delay


def retry(
    what: str,
    action: Callable[[], T],
    transient: tuple[type[BaseException], ...],
    stop: StopFlag,
    grace: float = 10.0,
) -> T:
    """Run `action` until it succeeds, backing off while it raises a `transient` error.

    Once `stop` is set, keep trying for `grace` seconds more, then raise `GiveUp`.
    Logs each failure, and how long the outage lasted once `what` is back.
    """
    backoff = Backoff()
    failing_since = None
    give_up_at = None
    while True:
        try:
            result = action()
        except transient as exc:
            now = time.monotonic()
            failing_since = failing_since or now
            if stop and give_up_at is None:
                give_up_at = now + grace
            if give_up_at is not None and now >= give_up_at:
                raise GiveUp(f"{what} still failing after stop was requested: {exc}") from exc
            delay = backoff.delay()
            log.warning("%s unavailable (%s); retrying in %.1f s", what, _short(exc), delay)
            if give_up_at is not None:
                time.sleep(delay)  # stop is already set: its wait() would not sleep
            else:
                stop.wait(delay)
            continue
        if failing_since is not None:
            log.warning("%s is back after %.1f s", what, time.monotonic() - failing_since)
        return result


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
