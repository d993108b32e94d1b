"""
Read cache over Redis: read-through, one load per key, a failure is only a miss.

Correctness does not rest on Redis: each entry carries the version (a per-database
namespace and the generation PostgreSQL changes in every write's own transaction,
``cache_generations``) it was loaded at, and a read only accepts an entry of the
current version; once a write is acknowledged no reader can accept an older answer.
Redis being down, slow or silent costs at most one ``timeout`` and then a
``cooldown`` in which the cache is skipped outright; errors are counted and logged
once per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog

from lake.errors import StoreUnavailableError

__all__ = ["RedisCache"]

T = TypeVar("T")
log = structlog.get_logger(__name__)
_RETRY = object()  # the loading caller was cancelled: waiters load for themselves


class RedisCache:
    """
    Bounded-time get and set, read-through with single flight per key.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout: float = 0.1,
        ttl_s: int = 300,
        cooldown_s: float = 1.0,
        log_interval_s: float = 30.0,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._ttl_s = ttl_s
        self._cooldown_s = cooldown_s
        self._log_interval_s = log_interval_s
        self._last_logged = float("-inf")
        self._skip_until = float("-inf")
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._pending: set[asyncio.Future[None]] = set()
        self.hits = 0
        self.misses = 0
        self.errors = 0

    @property
    def available(self) -> bool:
        """
        False while the cache is skipped after a failure.
        """
        return time.monotonic() >= self._skip_until

    def _failed(self, action: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        self._skip_until = now + self._cooldown_s
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
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.get(key)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        """
        Store ``value`` under ``key`` with the TTL; skipped on failure or cooldown.
        """
        if not self.available:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(key, value, ex=self._ttl_s)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)

    async def read_through(
        self,
        key: str,
        version: Awaitable[str],
        load: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        """
        Return the value of ``key`` cached at ``version``, or load it.

        The entry stores the version it was loaded at; the lookup and the version
        read run concurrently, and an entry of another version is a miss. One load
        per (key, version) runs at a time; the store back to Redis does not delay
        the answer.
        """
        cached, current = await asyncio.gather(self.get(key), version)
        tag = current.encode() + b"\n"
        if cached is not None and cached.startswith(tag):
            try:
                value = decode(cached[len(tag) :])
            except (ValueError, KeyError, TypeError):
                self.errors += 1  # unreadable entry: load it again
            else:
                self.hits += 1
                return value
        self.misses += 1
        flight = f"{key}@{current}"
        while (leader := self._inflight.get(flight)) is not None:
            result = await asyncio.shield(leader)
            if result is not _RETRY:
                return result  # type: ignore[no-any-return]
        value = await self._lead(flight, load)
        # Encoded in the background too: the caller has its answer first.
        self._spawn(self._store(key, tag, value, encode))
        return value

    async def _store(
        self, key: str, tag: bytes, value: T, encode: Callable[[T], bytes]
    ) -> None:
        try:
            data = tag + encode(value)
        except (TypeError, ValueError):  # a value JSON cannot hold: not cached
            self.errors += 1
            return
        await self.set(key, data)

    async def _lead(self, flight: str, load: Callable[[], Awaitable[T]]) -> T:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.set_result(_RETRY)
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; nobody else needs to
            raise
        finally:
            del self._inflight[flight]
        future.set_result(value)
        return value

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, grace: float = 1.0) -> None:
        """
        Let background writes finish (or cancel them) before Redis closes.
        """
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def stats(self) -> dict[str, int]:
        """
        Hits, misses, errors and whether Redis is being skipped right now.
        """
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "skipping": int(not self.available),
        }

    async def ping(self) -> str | None:
        """
        PING Redis (ignoring the cooldown); raise StoreUnavailableError on no answer.
        """
        try:
            async with asyncio.timeout(max(self._timeout, 0.5)):
                await self._client.ping()
        except (aioredis.RedisError, OSError, TimeoutError):
            msg = "redis did not answer PING"
            raise StoreUnavailableError(msg) from None
        self._skip_until = float("-inf")
        return None
