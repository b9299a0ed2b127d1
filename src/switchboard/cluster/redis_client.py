"""Connecting to Redis as `redis:` says (single server, Sentinel, or Redis Cluster), and its failures."""

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from switchboard.cluster.settings import RedisSettings

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a command raises while Redis cannot be reached: the callers answer `unavailable`."""
FAILURES = (*UNREACHABLE, RedisError, RedisClusterException)
"""What a command raises when Redis does not carry it out: unreachable, refused (an ACL, a failover in
progress), or, on a Redis Cluster, no shard reachable (not a RedisError in redis-py)."""

PREFIX = "{sb}:"
"""Every key shares one hash tag, so the Lua scripts' keys sit in one slot on a Redis Cluster too."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 6379)


def connect(settings: RedisSettings) -> Any:
    """A client (redis.asyncio.Redis or RedisCluster); it connects lazily, on the first command."""
    common: dict[str, Any] = {
        "username": settings.username or None,
        "password": settings.password or None,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "decode_responses": True,
        # One immediate retry (a connection Redis dropped when it restarted fails once), not redis-py's
        # default of ten with back-off: a call that cannot reach Redis fails within `timeout`.
        "retry": Retry(NoBackoff(), 1),
    }
    if settings.cluster_addresses:
        nodes = [ClusterNode(*_host_port(a)) for a in settings.cluster_addresses]
        return RedisCluster(startup_nodes=nodes, ssl=settings.use_tls, **common)
    if settings.sentinel_addresses:
        sentinel = Sentinel(
            [_host_port(a) for a in settings.sentinel_addresses],
            sentinel_kwargs={
                "username": settings.sentinel_username or None,
                "password": settings.sentinel_password or None,
                "socket_timeout": settings.timeout,
            },
            ssl=settings.use_tls,
            db=settings.db,
            **common,
        )
        return sentinel.master_for(settings.sentinel_master_name)
    host, port = _host_port(settings.address)
    return aioredis.Redis(host=host, port=port, db=settings.db, ssl=settings.use_tls, **common)
