"""`make cluster-demo`: the whole system on a Redis Cluster that it starts itself.

Three masters with a replica each (txstream.testing.PrivateRedisCluster, as the cluster
tests use) on free loopback ports, then what `make demo` runs against it: the stream
transport split into STREAM_PARTITIONS streams, two subscribers sharing them, the emitter
and the web app. Ctrl-C stops the processes, then the cluster.

The nodes live in var/cluster, emptied as the demo starts: each run's cluster is a new one
(its ports are chosen afresh, and a node's nodes.conf names its peers by port), but what the
last one left there (the nodes' logs, their append-only files) can be read after it stopped.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys

import config
from txstream import demo
from txstream.testing import PrivateRedisCluster, ServerMissing

log = logging.getLogger("cluster-demo")


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, run the demo on it, and stop both on Ctrl-C."""
    parser = demo.argument_parser(
        "Run txstream's emitter, subscribers and web app on a Redis Cluster of 3 masters "
        "and 3 replicas started here (in DATA_DIR/cluster). Uses a SQLite file unless "
        "DATABASE_URL is set."
    )
    parser.add_argument(
        "--subscribers", type=int, default=2, help="subscribers (default: %(default)s)"
    )
    parser.add_argument(
        "--partitions", type=int, default=3, help="STREAM_PARTITIONS (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    config.configure_logging("INFO")
    signal.signal(signal.SIGTERM, demo.interrupt)
    directory = args.data_dir / "cluster"
    shutil.rmtree(directory, ignore_errors=True)
    log.info("starting a Redis Cluster in %s", directory)
    try:
        cluster = PrivateRedisCluster(directory)
        cluster.start()  # stops what it started if it fails or is interrupted
    except KeyboardInterrupt:
        return 0
    except (ServerMissing, AssertionError, OSError) as exc:
        log.error("the Redis Cluster did not start: %s", exc)
        return 1
    try:
        print(ready_lines(cluster), flush=True)
        overrides = {
            "REDIS_URL": cluster.url,
            "REDIS_CLUSTER": "1",
            "TRANSPORT": "stream",
            "STREAM_PARTITIONS": str(args.partitions),
        }
        what = f"Redis Cluster at {cluster.url}, {args.partitions} stream partitions"
        inspect = f"    Inspect   redis-cli -c -p {cluster.masters()[0].port}"
        return demo.run_system(args, overrides, what, args.subscribers, [inspect])
    except KeyboardInterrupt:  # before the processes started
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("stopping the Redis Cluster")
        cluster.stop()
        log.info("the Redis Cluster has stopped")


def ready_lines(cluster: PrivateRedisCluster) -> str:
    """Where the cluster's nodes are, and what each is."""
    lines = ["", f"  Redis Cluster ready in {cluster.dir}"]
    for master in cluster.masters():
        slots = cluster.served_slots(master)
        replicas = ", ".join(f"127.0.0.1:{r.port}" for r in cluster.replicas_of(master))
        lines.append(
            f"    master 127.0.0.1:{master.port}  slots {min(slots)}-{max(slots)}"
            f"  replica {replicas}  ({master.dir.name})"
        )
    lines.append(f"    redis-cli -c -p {cluster.masters()[0].port} CLUSTER NODES")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    sys.exit(main())
