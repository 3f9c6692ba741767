"""Connecting to Redis: one server, or any node of a Redis Cluster.

Every process connects here. REDIS_CLUSTER=1 or 0 says which; unset, the server named by
REDIS_URL is asked (`INFO cluster`: cluster_enabled). On a cluster, redis-py's cluster
client finds every node from that one, follows slots as they move, and after a failover
asks the nodes again where each slot went.
"""

from __future__ import annotations

import dataclasses
import logging

import redis
from redis.cluster import RedisCluster

import config

log = logging.getLogger(__name__)

AnyRedis = redis.Redis | RedisCluster


def is_cluster(url: str, **kwargs) -> bool:
    """Whether the server at `url` is a node of a Redis Cluster (raises while it is down).

    A server that refuses INFO (an ACL without +info; an embedded fake) is taken for a
    single server, with a warning: REDIS_CLUSTER=1 says otherwise without asking.
    """
    with redis.Redis.from_url(url, **kwargs) as client:
        try:
            return bool(client.info("cluster").get("cluster_enabled"))
        except redis.ResponseError as exc:
            denied = isinstance(exc, redis.exceptions.NoPermissionError)
            log.log(
                logging.WARNING if denied else logging.INFO,
                "Redis at %s does not say whether it is a cluster (INFO: %s): taken for a "
                "single server; set REDIS_CLUSTER=1 or 0 to say which",
                config.mask_url(url),
                exc,
            )
            return False


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
