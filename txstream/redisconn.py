"""Connecting to Redis: one server, or any node of a Redis Cluster.

Every process connects here. REDIS_CLUSTER=1 or 0 says which; unset, the server named by
REDIS_URL is asked (HELLO: its `mode`). On a cluster, redis-py's cluster client finds
every node from that one, follows slots as they move, and after a failover asks the nodes
again where each slot went.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

import config

log = logging.getLogger(__name__)

AnyRedis = redis.Redis | RedisCluster
# What a client of either kind raises when Redis fails: the cluster client raises
# RedisClusterException, which is no RedisError, while no node of the cluster answers.
ERRORS = (redis.RedisError, RedisClusterException)


def is_cluster(url: str, **kwargs) -> bool:
    """Whether the server at `url` is a node of a Redis Cluster (raises while it is down).

    HELLO's `mode` says it, and every user may run HELLO: the users of deploy/redis.acl
    may not run INFO (`cluster_enabled`)."""
    with redis.Redis.from_url(url, decode_responses=True, **kwargs) as client:
        hello = client.execute_command("HELLO")
    if isinstance(hello, list):  # RESP2: the map's keys and values in turn
        hello = dict(zip(hello[::2], hello[1::2], strict=True))
    return hello.get("mode") == "cluster"


def resolve(settings: config.Settings) -> config.Settings:
    """`settings` with `redis_cluster` decided: as set, or asked from the server (raises a
    redis.ConnectionError while it cannot be asked: the caller retries)."""
    if settings.redis_cluster is not None:
        return settings
    cluster = is_cluster(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    if cluster and settings.stream_partitions == 1:
        log.warning(
            "Redis at %s is a cluster node, and STREAM_PARTITIONS is 1: every transaction "
            "goes to one master; set STREAM_PARTITIONS to spread them over the masters",
            config.mask_url(settings.redis_url),
        )
    checked = dataclasses.replace(settings, redis_cluster=cluster)
    if cluster:
        config.check_taggable(checked)
    return checked


def connect(settings: config.Settings, **kwargs) -> AnyRedis:
    """A client of the Redis of `settings`, whose `redis_cluster` is decided (`resolve`)."""
    if settings.redis_cluster is None:
        raise ValueError("redis_cluster is undecided: resolve(settings) first")
    if settings.redis_cluster:
        # No db number on a cluster, and no client_name: the cluster client takes none.
        kwargs.pop("client_name", None)
        return RedisCluster.from_url(settings.redis_url, **kwargs)
    return redis.Redis.from_url(settings.redis_url, **kwargs)


class Deferred:
    """A client made at its first use (and at the next, after an attempt that failed).

    The cluster client asks a node for the cluster's slots as it is made, and raises while
    none answers; the web app must start all the same, and answer 503 until Redis is back.
    Every attribute is the made client's.
    """

    def __init__(self, make: Callable[[], AnyRedis]) -> None:
        self._make = make
        self._client: AnyRedis | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
                client = self._client
        return getattr(client, name)
