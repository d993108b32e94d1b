"""
The Redis client: every timeout and retry option set explicitly.

redis-py's defaults change between versions (8.1 retries ten times with 5 s timeouts),
and Lake only uses Redis as a cache: one try with a short timeout, then a miss.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["open_redis"]

log = structlog.get_logger(__name__)


@asynccontextmanager
async def open_redis(
    *,
    url: str,
    password: str = "",
    socket_timeout: float = 0.1,
    socket_connect_timeout: float = 0.1,
    retries: int = 0,
    health_check_interval: int = 0,
    max_connections: int = 64,
    close_timeout: float = 2.0,
) -> AsyncIterator[aioredis.Redis]:
    """
    Create a Redis client, ping it once, and close it on exit.

    A Redis that does not answer at start-up is logged, not raised: the cache is not
    needed to serve, so Lake starts degraded and the health monitor reports it.
    """
    client = aioredis.Redis.from_url(
        url,
        password=password or None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), retries),
        retry_on_timeout=False,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
        decode_responses=False,
    )
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
