"""What the long-running processes share: a clean stop on signals, and retrying with backoff."""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
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


class Background:
    """Calls `work()` now and then every `interval` s, in a daemon thread of its own, until
    stopped: what the subscriber does beside storing, so that storing never waits for it.

    A failure is logged once, as a WARNING naming `what`, until a call succeeds again; the
    next call tries again.
    """

    def __init__(self, what: str, work: Callable[[], object], interval: float, name: str) -> None:
        self.what = what
        self.work = work
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failing = False

    def start(self) -> None:
        """Call it now, then every interval."""
        self._thread.start()

    def stop(self) -> None:
        """Stop calling it; wait for a call under way (`stopping()` tells it to hurry)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.work()
                self._failing = False
            except Exception as exc:  # the top of the thread's loop: log it, call again
                if not self._failing and not self._stopping.is_set():
                    log.warning("%s failed (retrying): %s", self.what, exc)
                self._failing = True
            self._stopping.wait(self.interval)


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


class Outage:
    """The outages of one dependency ("redis", "database"): backoff, and logs of each.

    Every loop that talks to the dependency reports to the same tracker, from any thread:
    `failed` on an error (logs it; the delay before the next attempt), `ok` on success
    (after an outage, logs how long it lasted).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0  # outages so far
        self._since: float | None = None
        self._backoff = Backoff()
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """Whether an outage is going on: the last attempt failed."""
        return self._since is not None

    def failed(self, exc: BaseException, note: str = "") -> float:
        """Record a failed attempt; the seconds to wait before the next one."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self.count += 1
            delay = self._backoff.delay()
        log.warning(
            "%s unavailable (%s)%s; retrying in %.1f s", self.what, short_error(exc), note, delay
        )
        return delay

    def ok(self) -> None:
        """Record a successful attempt: ends the outage, if there was one."""
        if self._since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            since, self._since, self._backoff = self._since, None, Backoff()
        if since is not None:
            log.warning("%s is back after %.1f s", self.what, time.monotonic() - since)


def retry(
    outage: Outage,
    action: Callable[[], T],
    transient: Callable[[BaseException], bool],
    stop: StopFlag,
    grace: float = 10.0,
) -> T:
    """Run `action` until it succeeds, backing off while it raises a `transient` error.

    Other errors propagate at once. Once `stop` is set, keep trying for `grace` seconds
    more, then raise `GiveUp`.
    """
    give_up_at = None
    while True:
        try:
            result = action()
        except Exception as exc:
            if not transient(exc):
                raise
            now = time.monotonic()
            if stop and give_up_at is None:
                give_up_at = now + grace
            if give_up_at is not None and now >= give_up_at:
                raise GiveUp(
                    f"{outage.what} still failing after stop was requested: {exc}"
                ) from exc
            delay = outage.failed(exc)
            if give_up_at is not None:
                time.sleep(delay)  # stop is already set: its wait() would not sleep
            else:
                stop.wait(delay)
            continue
        outage.ok()
        return result


def short_error(exc: BaseException) -> str:
    """The first line of an error's message, at most 200 characters: fit for a log line.

    A database error's own text can hold a whole batch's SQL; this keeps the driver's part.
    """
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def with_traceback(exc: BaseException) -> str:
    """`exc`'s type, short message and stack, for logging an unexpected error."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {short_error(exc)}\nTraceback (most recent call last):\n{stack}"
