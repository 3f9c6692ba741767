"""`make bench-scale` (bench/scale.py) runs, on servers of its own, and reports every goal."""

from __future__ import annotations

import re

from tests.helpers import service_unavailable
from txstream.processes import Script
from txstream.testing import (
    MARIADB_INSTALL_DB,
    MARIADBD,
    REDIS_SERVER,
    ServerMissing,
    require_binary,
)

GOALS = 5  # the issue's: small vs ceiling, population (3), history
GOAL_ROW = re.compile(r"^\| [^|]+ \| \d+\.\d\dx? \| (>=|<=) [\d.]+x? \| (PASS|FAIL) \|$")
RUN_ROW = re.compile(r"^\| [^|]+ \| [\d,]+ \| [\d,]+ \| \d+\.\d\d \|$")


def test_quick_run_reports_every_goal_and_the_runs_behind_them():
    try:
        for binary in (MARIADBD, MARIADB_INSTALL_DB, REDIS_SERVER):
            require_binary(binary)
    except ServerMissing as exc:
        service_unavailable("A private MariaDB and Redis", exc)
    bench = Script("bench/scale.py", "--quick", "--no-chart", env={})
    bench.wait_ok(240)
    tables = bench.output.split("\n\n")
    goals = next(t for t in tables if t.startswith("| goal |")).splitlines()[2:]
    assert len(goals) == GOALS, bench.output
    assert all(GOAL_ROW.match(row) for row in goals), goals
    runs = next(t for t in tables if t.startswith("| run |")).splitlines()[2:]
    names = [row.split(" | ")[0] for row in runs if RUN_ROW.match(row)]
    assert any("on 100,000 rows of history" in name for name in names), runs
    # 15,000 rows in slices of 1,000 or more, from progress line to progress line (sampled
    # every 0.1 s): how many depends on the machine's speed, but never a single one.
    assert sum("slice" in name for name in names) >= 2, runs
