"""Retrying with capped backoff, and stopping cleanly."""

from __future__ import annotations

import logging

import pytest

from txstream.runtime import Backoff, GiveUp, StopFlag, retry


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


class Flaky:
    """Fails `failures` times with ConnectionError, then returns 'done'."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("server down")
        return "done"


def test_retry_backs_off_until_the_action_succeeds(caplog):
    flaky = Flaky(failures=2)
    with caplog.at_level(logging.WARNING):
        assert retry("database", flaky, (ConnectionError,), StopFlag()) == "done"
    assert flaky.calls == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("database unavailable (server down); retrying in 0.1 s")
    assert messages[-1].startswith("database is back after")


def test_retry_gives_up_after_the_grace_period_once_stopped():
    stop = StopFlag()
    stop.set()
    flaky = Flaky(failures=10**9)
    with pytest.raises(GiveUp, match="database still failing"):
        retry("database", flaky, (ConnectionError,), stop, grace=0.2)
    assert flaky.calls >= 2  # it kept trying during the grace period


def test_retry_lets_other_errors_through_at_once():
    def broken():
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        retry("database", broken, (ConnectionError,), StopFlag())


def test_stop_flag_wakes_a_waiter_and_is_truthy():
    stop = StopFlag()
    assert not stop and stop.wait(0) is False
    stop.set()
    assert stop and stop.wait(10) is True
