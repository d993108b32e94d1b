"""
The Redis client: every timeout and retry option set explicitly, in the three shapes
Redis runs in (``redis.mode``).

redis-py's defaults change between versions (8.1 retries ten times with 5 s timeouts),
and Lake only uses Redis as a cache: one try with a short timeout, then a miss.

- ``standalone``: one server, ``redis.url`` (``redis://``, ``rediss://``,
  ``unix://``); redis-py's ``Redis`` over a ``BlockingConnectionPool``.
- ``sentinel``: ``redis.url`` lists the sentinels (``redis://s1:26379,s2:26379/0``),
  ``redis.sentinel_master`` names the master. redis-py's ``Sentinel.master_for``,
  over a blocking pool of Sentinel-managed connections (redis-py ships none:
  ``BlockingSentinelPool``). Each new connection asks the sentinels where the
  master is; a connection to a master that was demoted is dropped on its first
  READONLY reply. A failover is followed without a restart.
- ``cluster``: ``redis.url`` lists seed nodes (``redis://n1:6379,n2:6379``);
  redis-py's ``RedisCluster``, which learns the slot map from them and follows
  MOVED replies. Its pools do not block: a node whose ``max_connections`` are all in
  use answers ``MaxConnectionsError`` at once, which the cache and the quotas count
  as busy (a miss), never as Redis failing. Its own ``RedisClusterException`` (no
  node reachable, a slot not covered) is raised as a ``ConnectionError``, so that
  every mode fails with the same ``RedisError`` family and a failure stays a miss.

A ``rediss://`` url means TLS, always verified, in every mode (for the sentinels as
well as the data nodes): the certificate must chain to ``ssl_ca_file`` (or to the
system's CAs when none is given) and name the host (hostname checking is set
explicitly; redis-py before 6.0 skipped it). The url's password, or else
``password``, is the data nodes'; ``sentinel_password`` the sentinels' own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from lake.schema import REDIS_DEFAULT_PORTS, split_nodes
from lake.tls import require_readable

__all__ = [
    "BlockingSentinelPool",
    "ClusterUnavailableError",
    "LakeRedisCluster",
    "RedisClient",
    "cluster_connections",
    "open_redis",
]

log = structlog.get_logger(__name__)

RedisClient = aioredis.Redis | RedisCluster


class ClusterUnavailableError(RedisConnectionError):
    """
    The cluster could not be reached as a whole (no seed node answered, a slot not
    served): redis-py's ``RedisClusterException``, as a ``RedisError``.
    """


class LakeRedisCluster(RedisCluster):
    """
    ``RedisCluster`` whose failures are all ``RedisError``s, and whose PING asks
    every master (redis-py asks every node, replicas too: a dead replica would make
    a healthy cache look down).
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """
        Run one command as ``RedisCluster`` does; its client-side exceptions are
        raised as ``ClusterUnavailableError``.
        """
        if args and args[0] == "PING":
            kwargs.setdefault("target_nodes", RedisCluster.PRIMARIES)
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            msg = f"redis cluster unavailable: {type(exc).__name__}"
            raise ClusterUnavailableError(msg) from exc


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """
    Sentinel-managed connections in a blocking pool: past ``max_connections`` a call
    waits up to ``timeout`` for a free one (``ConnectionError("No connection
    available.")`` then), as in standalone mode, instead of redis-py's
    ``SentinelConnectionPool`` raising ``MaxConnectionsError`` at once.
    """


def cluster_connections(client: RedisCluster) -> dict[str, int]:
    """
    A cluster client's connections over every node it knows: in use, available,
    and the most it opens to the masters it sends commands to
    (``max_connections`` each). redis-py keeps them in each node's collections.
    """
    nodes = client.get_nodes()
    opened = sum(len(getattr(n, "_connections", ())) for n in nodes)
    free = sum(len(getattr(n, "_free", ())) for n in nodes)
    return {
        "in_use": opened - free,
        "available": free,
        "max": sum(n.max_connections for n in client.get_primaries()),
    }


def _tls_options(
    url: str, ca_file: str, cert_file: str, key_file: str
) -> dict[str, Any]:
    # redis:// connections take no ssl_* arguments; rediss:// ones get them all.
    if not url.startswith("rediss://"):
        return {}
    require_readable(ca_file, cert_file, key_file)
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": ca_file or None,
        "ssl_certfile": cert_file or None,
        "ssl_keyfile": key_file or None,
    }


def _credentials(url: str, password: str) -> dict[str, Any]:
    # The url's user and password win over redis.password, as redis-py's from_url.
    parts = urlsplit(url)
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else password or None,
    }


def _db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def _standalone(url: str, password: str, pool_wait: float, **common: Any) -> Any:
    # A blocking pool: past max_connections a call waits (within pool_wait) for a
    # free connection instead of raising MaxConnectionsError, which turned the
    # cache off for a cooldown under load.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, timeout=pool_wait, password=password or None, **common
    )
    return aioredis.Redis.from_pool(pool)  # the client owns and closes the pool


def _sentinel(
    url: str,
    password: str,
    pool_wait: float,
    master: str,
    sentinel_password: str,
    **common: Any,
) -> tuple[aioredis.Redis, Sentinel]:
    tls: dict[str, Any] = {"ssl": True} if url.startswith("rediss://") else {}
    sentinel_options = {
        k: v
        for k, v in common.items()
        if k.startswith(("socket_", "ssl_")) or k == "retry"
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        split_nodes(url, REDIS_DEFAULT_PORTS["sentinel"]),
        sentinel_kwargs={
            **sentinel_options,
            **tls,
            "password": sentinel_password or None,
        },
    )
    client = sentinel.master_for(
        master,
        connection_pool_class=BlockingSentinelPool,
        timeout=pool_wait,
        db=_db(url),
        **_credentials(url, password),
        **tls,
        **common,
    )
    return client, sentinel


def _cluster(url: str, password: str, **common: Any) -> LakeRedisCluster:
    tls: dict[str, Any] = {"ssl": True} if url.startswith("rediss://") else {}
    common.pop("retry_on_timeout")  # the cluster's retry object says it all
    return LakeRedisCluster(
        startup_nodes=[
            ClusterNode(host, port)
            for host, port in split_nodes(url, REDIS_DEFAULT_PORTS["cluster"])
        ],
        # A slot whose master is failing over is a miss, not a client that
        # refuses to start or to refresh its map.
        require_full_coverage=False,
        **_credentials(url, password),
        **tls,
        **common,
    )


@asynccontextmanager
async def open_redis(
    *,
    url: str,
    mode: str = "standalone",
    password: str = "",
    sentinel_master: str = "",
    sentinel_password: str = "",
    socket_timeout: float = 0.1,
    socket_connect_timeout: float = 0.1,
    retries: int = 0,
    health_check_interval: int = 0,
    max_connections: int = 256,
    pool_wait: float = 0.05,
    close_timeout: float = 2.0,
    ssl_ca_file: str = "",
    ssl_cert_file: str = "",
    ssl_key_file: str = "",
) -> AsyncIterator[RedisClient]:
    """
    Create the Redis client of ``mode``, ping it once, and close it on exit.

    A Redis that does not answer at start-up is logged, not raised: the cache is not
    needed to serve, so Lake starts degraded and the health monitor reports it.
    ``pool_wait`` bounds the wait for a free pooled connection (keep it below the
    cache timeout, so that a full pool reads as busy, not as Redis failing); in
    cluster mode ``max_connections`` is per node, and a full node does not wait.
    """
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), retries),
        "retry_on_timeout": False,
        "health_check_interval": health_check_interval,
        "max_connections": max_connections,
        "decode_responses": False,
        **_tls_options(url, ssl_ca_file, ssl_cert_file, ssl_key_file),
    }
    closers: list[Callable[[], Awaitable[None]]] = []
    client: RedisClient
    if mode == "sentinel":
        client, sentinel = _sentinel(
            url, password, pool_wait, sentinel_master, sentinel_password, **common
        )
        closers.append(sentinel.aclose)
    elif mode == "cluster":
        client = _cluster(url, password, **common)
    else:
        client = _standalone(url, password, pool_wait, **common)
    closers.insert(0, client.aclose)
    try:
        try:
            await client.ping()
            log.info("redis_opened", mode=mode)
        except (aioredis.RedisError, OSError):
            log.warning("redis_unreachable_at_start", mode=mode)
        yield client
    finally:
        try:
            async with asyncio.timeout(close_timeout):
                for close in closers:
                    await close()
        except TimeoutError:
            log.warning("redis_close_timed_out", after_s=close_timeout)
        log.info("redis_closed")
