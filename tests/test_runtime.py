"""Retrying with capped backoff, and stopping cleanly."""

from __future__ import annotations

import logging

import pytest

from txstream.runtime import Backoff, GiveUp, Outage, StopFlag, retry


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


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
        assert retry(Outage("database"), flaky, is_connection_error, StopFlag()) == "done"
    assert flaky.calls == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("database unavailable (server down); retrying in 0.1 s")
    assert messages[-1].startswith("database is back after")


def test_retry_gives_up_after_the_grace_period_once_stopped():
    stop = StopFlag()
    stop.set()
    flaky = Flaky(failures=10**9)
    with pytest.raises(GiveUp, match="database still failing"):
        retry(Outage("database"), flaky, is_connection_error, stop, grace=0.2)
    assert flaky.calls >= 2  # it kept trying during the grace period


def test_retry_lets_other_errors_through_at_once():
    def broken():
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        retry(Outage("database"), broken, is_connection_error, StopFlag())


def test_one_outage_is_logged_once_whoever_meets_it(caplog):
    """Two loops report to the same tracker: one outage, one "back after" line."""
    outage = Outage("redis")
    with caplog.at_level(logging.WARNING):
        delays = [outage.failed(ConnectionError("down")) for _ in range(3)]
        outage.ok()
        outage.ok()
    assert delays == [0.1, 0.2, 0.4]
    assert outage.count == 1
    back = [r.getMessage() for r in caplog.records if "is back after" in r.getMessage()]
    assert len(back) == 1
    assert outage.failed(ConnectionError("down again")) == 0.1  # a new outage starts afresh
    assert outage.count == 2


def test_stop_flag_wakes_a_waiter_and_is_truthy():
    stop = StopFlag()
    assert not stop and stop.wait(0) is False
    stop.set()
    assert stop and stop.wait(10) is True
