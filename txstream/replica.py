"""The web app's reads from a MariaDB replica (DATABASE_READ_URL), the primary's when it is unfit.

A request reads from the replica while it answers and is at most READ_MAX_LAG_S behind the
primary, by its `Seconds_Behind_Master`; else from the primary (DATABASE_URL, the app's
ENGINE). Writes never come here: token look-ups (which note `last_used_at`) and the
commands use the primary, so a revoked token fails at once, whatever a replica still holds.

The replica's status is read at most once per CHECK_EVERY_S per process, by the request
that finds it stale: the others pay no round trip for it. A replica that fails a read is
left alone until the next check, and that request reads again from the primary. Its
engine gives up on a connection after CONNECT_TIMEOUT_S and on an answer after
READ_TIMEOUT_S, so a replica that hangs or vanishes holds up a request by that much at
most, and then one request per CHECK_EVERY_S per process (the check). Each switch, one
way or the other, is logged once. A response whose data came from the replica says how
far behind it was: `X-Replica-Lag`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, TypeVar

from flask import Flask, Response, current_app, g
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

import config
import models
from txstream import queries

log = logging.getLogger(__name__)
T = TypeVar("T")

HEADER = "X-Replica-Lag"
CHECK_EVERY_S = 1.0  # the replica's status is read at most this often, per process
CONNECT_TIMEOUT_S = 1  # a replica that does not accept a connection by then is down
READ_TIMEOUT_S = 5  # nor one that does not answer a read; txstream's reads take ms
_STATUS = text("SHOW ALL SLAVES STATUS")  # MariaDB: a row per replication connection
_EXTENSION = "txstream_replica"

# Why the replica is not read: the words the System page shows (the log says more).
DOWN = "down"  # it did not answer, or refused the status query (privileges: README)
STOPPED = "replication stopped"
BEHIND = "too far behind"
NOT_A_REPLICA = "not a replica"
UNCHECKED = "not checked yet"
REASONS = (DOWN, STOPPED, BEHIND, NOT_A_REPLICA, UNCHECKED)


class Verdict(NamedTuple):
    """Whether reads may go to the replica: its lag in seconds (None: unknown), and the
    reason when they may not (None: they may)."""

    lag: int | None
    reason: str | None
    detail: str = ""  # for the log

    @property
    def fit(self) -> bool:
        """Whether reads may go to the replica."""
        return self.reason is None


def judge(status: Iterable[Mapping], max_lag: float) -> Verdict:
    """The verdict on a replica from its `SHOW ALL SLAVES STATUS` rows.

    Every replication connection must run (a NULL `Seconds_Behind_Master`: a thread
    stopped) and the worst one be at most `max_lag` seconds behind.
    """
    lags = [row["Seconds_Behind_Master"] for row in status]
    if not lags:
        return Verdict(None, NOT_A_REPLICA, "it replicates from no primary")
    if None in lags:
        return Verdict(None, STOPPED, "its replication is stopped (Seconds_Behind_Master NULL)")
    lag = int(max(lags))
    if lag > max_lag:
        return Verdict(lag, BEHIND, f"it is {lag} s behind (READ_MAX_LAG_S={max_lag:g})")
    return Verdict(lag, None)


class ReadRouter:
    """Decides, for one process, whether reads go to the replica now; logs each switch.

    `clock` (monotonic seconds) times the checks; a test may stop it, to hold a verdict.
    """

    def __init__(
        self,
        replica: Engine,
        max_lag: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replica = replica
        self.max_lag = max_lag
        self.clock = clock
        self._checking = threading.Lock()  # one thread checks; the others use the last verdict
        self._switching = threading.Lock()
        self._next_check = -float("inf")
        self.verdict: Verdict | None = None  # None: not checked yet
        self.where = config.mask_url(replica.url.render_as_string(hide_password=False))

    def lag(self) -> int | None:
        """The replica's lag in seconds if this request may read from it, else None."""
        now = self.clock()
        if now >= self._next_check and self._checking.acquire(blocking=False):
            try:
                if now >= self._next_check:
                    self._set(self._check())
                    self._next_check = self.clock() + CHECK_EVERY_S
            finally:
                self._checking.release()
        verdict = self.verdict
        return verdict.lag if verdict is not None and verdict.fit else None

    def failed(self, exc: DBAPIError) -> None:
        """A read on the replica failed: read the primary until the next check."""
        self._next_check = self.clock() + CHECK_EVERY_S
        self._set(Verdict(None, DOWN, f"a read failed ({exc.orig})"))

    def _check(self) -> Verdict:
        try:
            rows = queries.read(self.replica, _status)
        except DBAPIError as exc:
            return Verdict(None, DOWN, f"its status cannot be read ({exc.orig})")
        return judge(rows, self.max_lag)

    def _set(self, verdict: Verdict) -> None:
        with self._switching:
            before, self.verdict = self.verdict, verdict
            if before is None or before.fit != verdict.fit:
                self._log_switch(verdict)

    def _log_switch(self, verdict: Verdict) -> None:
        if verdict.fit:
            log.info(
                "reads go to the replica %s now: %d s behind (READ_MAX_LAG_S=%g)",
                self.where,
                verdict.lag,
                self.max_lag,
            )
        else:
            log.warning(
                "reads go to the primary now, not the replica %s: %s",
                self.where,
                verdict.detail,
            )


def _status(conn: Connection) -> list[Mapping]:
    return list(conn.execute(_STATUS).mappings())


def init_app(app: Flask) -> None:
    """Route `app`'s reads to DATABASE_READ_URL's replica when set, and mark what it served."""
    url = app.config["DATABASE_READ_URL"]
    if url:
        engine = models.make_engine(
            url, reads_only=True, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S
        )
        app.extensions[_EXTENSION] = ReadRouter(engine, app.config["READ_MAX_LAG_S"])
    app.after_request(_mark_replica_reads)


def router() -> ReadRouter | None:
    """The current app's router; None without a replica."""
    return current_app.extensions.get(_EXTENSION)


def read(work: Callable[[Connection], T]) -> T:
    """`work(conn)` for this request: on the replica while it is fit, else on the primary.

    The choice is made at a request's first read and holds for the rest of it, so the
    parts of one page come from one server; a failure on the replica moves the rest of
    the request, this read included, to the primary.
    """
    chosen = router()
    if chosen is not None:
        if "replica_chosen_lag" not in g:  # the request's first read
            g.replica_chosen_lag = chosen.lag()
        if g.replica_chosen_lag is not None:
            try:
                result = queries.read(chosen.replica, work)
            except DBAPIError as exc:
                chosen.failed(exc)
                g.replica_chosen_lag = None
            else:
                g.replica_served_lag = g.replica_chosen_lag
                return result
    return queries.read(current_app.config["ENGINE"], work)


def _mark_replica_reads(response: Response) -> Response:
    """Say how far behind the replica was on a response made of what it read."""
    lag = g.get("replica_served_lag")
    if lag is not None and response.status_code < 400:
        response.headers[HEADER] = str(lag)
    return response


def status() -> dict | None:
    """The replica as the System page shows it; None without a replica."""
    chosen = router()
    if chosen is None:
        return None
    chosen.lag()  # a stale verdict is renewed, as for a read
    verdict = chosen.verdict or Verdict(None, UNCHECKED)  # another thread checks it now
    return {
        "reads_from": "replica" if verdict.fit else "primary",
        "lag_s": verdict.lag,
        "reason": verdict.reason,
    }
