"""
Read cache over Redis: a cache failure is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
import structlog

from lake.errors import StoreUnavailableError

__all__ = ["RedisCache"]

log = structlog.get_logger(__name__)


class RedisCache:
    """
    Bounded-time get and set; errors are counted and logged once per interval.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout: float = 0.1,
        ttl_s: int = 300,
        log_interval_s: float = 30.0,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._ttl_s = ttl_s
        self._log_interval_s = log_interval_s
        self._last_logged = float("-inf")
        self.errors = 0

    def _failed(self, action: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_logged >= self._log_interval_s:
            self._last_logged = now
            log.warning(
                "cache_unavailable",
                action=action,
                errors=self.errors,
                error=type(exc).__name__,
            )

    async def get(self, key: str) -> bytes | None:
        """
        Return the cached bytes for ``key``, or None on a miss or any failure.
        """
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.get(key)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        """
        Store ``value`` under ``key`` with the configured TTL; failures are skipped.
        """
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(key, value, ex=self._ttl_s)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)

    async def ping(self) -> str | None:
        """
        PING Redis; raise StoreUnavailableError when it does not answer.
        """
        try:
            async with asyncio.timeout(self._timeout * 10):
                await self._client.ping()
        except (aioredis.RedisError, OSError, TimeoutError):
            msg = "redis did not answer PING"
            raise StoreUnavailableError(msg) from None
        return None
