"""
The Redis client: every timeout and retry option set explicitly.

redis-py's defaults change between versions (8.1 retries ten times with 5 s timeouts),
and Lake only uses Redis as a cache: one try with a short timeout, then a miss.

A ``rediss://`` url means TLS, always verified: the certificate must chain to
``ssl_ca_file`` (or to the system's CAs when none is given) and name the host
(hostname checking is set explicitly; redis-py before 6.0 skipped it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from lake.tls import require_readable

__all__ = ["open_redis"]

log = structlog.get_logger(__name__)


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


@asynccontextmanager
async def open_redis(
    *,
    url: str,
    password: str = "",
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
) -> AsyncIterator[aioredis.Redis]:
    """
    Create a Redis client, ping it once, and close it on exit.

    A Redis that does not answer at start-up is logged, not raised: the cache is not
    needed to serve, so Lake starts degraded and the health monitor reports it.
    ``pool_wait`` bounds the wait for a free pooled connection (keep it below the
    cache timeout, so that a full pool reads as busy, not as Redis failing).
    """
    # A blocking pool: past max_connections a call waits (within pool_wait) for a
    # free connection instead of raising MaxConnectionsError, which turned the
    # cache off for a cooldown under load.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        timeout=pool_wait,
        password=password or None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), retries),
        retry_on_timeout=False,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
        decode_responses=False,
        **_tls_options(url, ssl_ca_file, ssl_cert_file, ssl_key_file),
    )
    client = aioredis.Redis.from_pool(pool)  # the client owns and closes the pool
    try:
        try:
            await client.ping()
            log.info("redis_opened")
        except (aioredis.RedisError, OSError):
            log.warning("redis_unreachable_at_start")
        yield client
    finally:
        try:
            async with asyncio.timeout(close_timeout):
                await client.aclose()
        except TimeoutError:
            log.warning("redis_close_timed_out", after_s=close_timeout)
        log.info("redis_closed")
