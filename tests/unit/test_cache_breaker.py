"""
Redis's breaker in the read cache: Redis's own failures open it; a loop too busy
to hear Redis in time does not.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lake.protection import BreakerSettings, BreakerState, CircuitBreaker
from lake.stores.cache import RedisCache


class SilentRedis:
    """A Redis client whose every call hangs (a silent server)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> Any:
        self.calls += 1
        await asyncio.Event().wait()

    async def set(self, key: str, value: bytes, ex: int) -> Any:
        self.calls += 1
        await asyncio.Event().wait()


class StalledLoop:
    """A loop-lag record saying the loop stalled all along."""

    def stalled_since(self, started: float) -> float:
        return 10.0


def cache(lag: Any = None) -> tuple[RedisCache, CircuitBreaker, SilentRedis]:
    client = SilentRedis()
    breaker = CircuitBreaker("redis", BreakerSettings(min_calls=5, open_wait_s=60))
    redis_cache = RedisCache(
        client,  # type: ignore[arg-type]
        timeout=0.01,
        breaker=breaker,
        loop_lag=lag,
    )
    return redis_cache, breaker, client


async def test_timeouts_of_a_silent_redis_open_its_breaker_then_skip_it() -> None:
    redis_cache, breaker, client = cache()
    for i in range(5):
        assert await redis_cache.get(f"k{i}") is None
    assert breaker.state is BreakerState.OPEN
    assert not redis_cache.available
    assert await redis_cache.get("later") is None
    assert client.calls == 5  # skipped while open


async def test_timeouts_while_the_loop_stalled_are_not_held_against_redis() -> None:
    redis_cache, breaker, client = cache(StalledLoop())
    for i in range(20):
        assert await redis_cache.get(f"k{i}") is None
    assert breaker.state is BreakerState.CLOSED
    assert redis_cache.available
    assert client.calls == 20
    assert redis_cache.stats()["busy"] == 20


async def test_failed_lookups_leave_the_routes_costs_alone() -> None:
    """Lookups that time out (Redis failing over) are errors, not samples of what
    a lookup costs: the route's measured lookup cost and hit ratio stay what they
    were, so the route is cached again as soon as Redis answers."""
    settings = BreakerSettings(min_calls=10_000, open_wait_s=60)  # stays closed
    redis_cache = RedisCache(
        SilentRedis(),  # type: ignore[arg-type]
        timeout=0.01,
        breaker=CircuitBreaker("redis", settings),
    )

    async def version() -> str:
        return "v1"

    async def load() -> int:
        return 1

    for i in range(100):
        value = await redis_cache.read_through(
            f"k{i}", version, load, lambda v: b"%d" % v, int, route="R"
        )
        assert value == 1
    await redis_cache.drain()  # the write-backs time out too
    policy = redis_cache.routes["R"]
    assert redis_cache.errors == 200
    assert policy.lookup_us == 0.0  # never measured: no lookup got an answer
    assert policy.hit == 1.0
    assert policy.pays()


async def test_a_near_entry_dropped_by_another_reader_is_still_a_hit() -> None:
    """Two readers of one key: one finds its version older than the entry kept in
    process and drops it while the other, whose version matches, is still asking:
    that one is served the entry, not a KeyError."""
    redis_cache = RedisCache(SilentRedis(), timeout=0.01)  # type: ignore[arg-type]
    redis_cache._remember("k", "v2", 7, 1)
    current = asyncio.get_running_loop().create_future()

    async def slow_version() -> str:
        return str(await current)

    async def old_version() -> str:
        return "v1"

    async def load() -> int:
        return 0

    def unstorable(value: int) -> bytes:
        raise TypeError  # the second reader's answer is not kept again

    hit = asyncio.create_task(
        redis_cache.read_through("k", slow_version, load, unstorable, int)
    )
    await asyncio.sleep(0)  # the first reader is waiting for its version
    await redis_cache.read_through("k", old_version, load, unstorable, int)
    await redis_cache.drain()
    assert "k" not in redis_cache._near  # dropped by the second reader
    current.set_result("v2")
    assert await hit == 7
