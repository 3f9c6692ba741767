"""`make cluster-demo`: it starts a Redis Cluster of its own, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.helpers import service_unavailable
from tests.test_demo import get_json
from txstream.processes import Script, free_port, wait_until
from txstream.testing import REDIS_CLI, REDIS_SERVER, ServerMissing, require_binary


def processes_in(directory: Path) -> set[int]:
    """The processes working in `directory` or below: a redis-server works in its --dir."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:  # gone meanwhile, or not ours to look at
                continue
            if cwd.is_relative_to(directory):
                pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """Whether process `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cluster_demo_help_names_its_flags():
    demo = Script("-m", "txstream.cluster_demo", "--help", env={})
    demo.wait_ok(timeout=30)
    for flag in ("--subscribers", "--partitions", "--data-dir", "--port", "--rate"):
        assert flag in demo.output
    assert "Redis Cluster of 3 masters and 3 replicas" in " ".join(demo.output.split())


@pytest.mark.services
@pytest.mark.cluster
def test_cluster_demo_stops_its_cluster_on_ctrl_c(tmp_path):
    for binary in (REDIS_SERVER, REDIS_CLI):
        try:
            require_binary(binary)
        except ServerMissing as exc:
            service_unavailable("The cluster demo's Redis Cluster", exc)
    data = tmp_path.resolve()
    demo = Script(
        *("-m", "txstream.cluster_demo", "--data-dir", str(data), "--port", str(free_port())),
        *("--rate", "50"),
        env={"DATABASE_URL": ""},  # the SQLite file in --data-dir
    )
    nodes: set[int] = set()
    try:
        demo.wait_for_line(r"Redis Cluster ready in ", timeout=60)
        demo.wait_for_line(r"redis-cli -c -p \d+ CLUSTER NODES", timeout=5)  # its last line
        assert len(re.findall(r"master 127\.0\.0\.1:\d+ .* replica 127", demo.output)) == 3
        nodes = processes_in(data / "cluster")
        assert len(nodes) == 6, demo.output  # three masters, three replicas
        curl = demo.wait_for_line(
            r'API +curl -H "Authorization: Bearer (txs_\S+)" (http://\S+)/api'
        )
        token, base = curl.groups()
        latest = wait_until(
            lambda: get_json(f"{base}/api/transactions?limit=50", token)["items"],
            60,
            "transactions sent through the cluster, stored, and served by the web app",
        )
        users = {item["user_id"] for item in latest}
        recent = {u: get_json(f"{base}/api/users/{u}/recent", token)["items"] for u in users}
        assert any(recent.values()), "recent lists read from the partitions' slots"
        assert get_json(f"{base}/healthz") == {"redis": "ok", "database": "ok"}
        assert demo.stop(signal.SIGINT, timeout=60) == 0, demo.output
        assert not any(alive(pid) for pid in nodes)
        assert processes_in(data / "cluster") == set()
        assert "the Redis Cluster has stopped" in demo.output
        assert "Traceback" not in demo.output
    finally:
        demo.kill()
        for pid in nodes:  # only if the demo left them behind: this test's own nodes
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in nodes), 10, "the nodes to be gone")
