"""
Redis misbehaving under a running Lake (F12-F14, F21's Redis half), injected with
the fault proxy: the cache is an optimisation, so every read is still answered
from PostgreSQL, fresh, and a cancelled command never hands its reply to the next.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from lake.container import aresolve, create_container
from lake.health import Status
from lake.operations import Point, QueryPoints, WritePoints
from tests.faults.conftest import T0
from tests.waiting import eventually

SLACK = 0.5  # per read, over the cache timeout: generous for a loaded machine


def query(n: int = 0) -> QueryPoints:
    return QueryPoints("t1", "m", T0, T0 + timedelta(hours=1), limit=1000 + n)


async def values(lake, n: int = 0) -> list[float]:
    return [p.value for p in (await lake.coordinate(query(n))).points]


async def timed_reads(lake, expected: list[float], n: int = 10) -> list[float]:
    """Read the same query ``n`` times; each must succeed with ``expected``."""
    took = []
    for _ in range(n):
        started = time.monotonic()
        assert await values(lake) == expected
        took.append(time.monotonic() - started)
    return took


@pytest.mark.parametrize("fault", ["down", "blackhole", "slow", "cut"])
async def test_f12_redis_faults_reads_still_served_from_postgres(
    lake, redis_proxy, proxied_settings, fault
):
    """Redis refused, silent, 2 s slow, or every reply cut: every read succeeds from
    PostgreSQL, each adds at most about the cache timeout, and Lake stays ready
    (redis is not critical)."""
    await lake.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
    assert await values(lake) == [1.0]  # cached
    if fault == "down":
        await redis_proxy.disable()
    elif fault == "blackhole":
        redis_proxy.blackhole()
    elif fault == "slow":
        redis_proxy.latency(2000)
    else:
        redis_proxy.cut_after(3, once=False)
    await lake.coordinate(WritePoints("t1", "m", [Point(T0, 2.0)]))
    took = await timed_reads(lake, [2.0])
    assert max(took) < proxied_settings["cache"]["timeout"] + SLACK, took
    report = await lake.health()
    assert report.component("redis").status is not Status.UP
    assert report.ready  # F21: Redis down, Lake still SERVING (degraded)
    assert report.status is Status.DEGRADED
    # Reads of other keys ask Redis and fail, until its breaker opens (5 calls
    # in 10 s, half failed); then the cache is skipped: no more Redis errors.
    for n in range(10):
        await lake.coordinate(query(n=n + 1))
    stats = (await lake.status()).cache
    assert stats is not None
    assert stats["breaker"] == "open", stats
    errors = stats["errors"]
    for n in range(10):
        await lake.coordinate(query(n=n + 100))
    stats = (await lake.status()).cache
    assert stats is not None
    assert stats["errors"] == errors  # not one Redis call while it is open


async def test_f13_cancelled_redis_command_never_answers_the_next(
    lake, redis_proxy, servers, proxied_container
):
    """GETs cut short by the cache timeout while Redis replies late: each next GET
    on the client returns its own key's value, never the late reply of another."""
    rd = servers["redis"]
    direct = aioredis.Redis.from_url(rd.url, password=rd.password or None)
    client = await aresolve(proxied_container.redis)
    try:
        for i in range(10):
            await direct.set(f"f13:{i}", f"value-{i}")
        for i in range(0, 10, 2):
            redis_proxy.latency(300, direction="down")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.get(f"f13:{i}")
            redis_proxy.clear()  # the late reply to f13:{i} is still on its way
            assert await client.get(f"f13:{i + 1}") == f"value-{i + 1}".encode()
    finally:
        await direct.aclose()


async def test_f14_no_stale_value_after_redis_was_down_during_an_update(
    lake, redis_proxy, proxied_container
):
    """A cached value, Redis down while it is overwritten, Redis back holding the
    old entry: every later read sees the new value, once Redis serves hits again
    too."""
    cache = await aresolve(proxied_container.cache)
    await lake.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
    assert await values(lake) == [1.0]
    await cache.drain()  # the entry is in Redis now
    await redis_proxy.disable()
    await lake.coordinate(WritePoints("t1", "m", [Point(T0, 2.0)]))
    assert await values(lake) == [2.0]
    await redis_proxy.enable()
    hits = cache.hits
    stale = 0

    async def hit_again() -> bool:
        nonlocal stale
        got = await values(lake)
        stale += got != [2.0]
        await cache.drain()
        return bool(cache.hits > hits)

    await eventually(hit_again, within=5, every=0.05)
    assert stale == 0


async def test_f12_lake_starts_with_redis_silent(proxied_settings, redis_proxy):
    """Redis black-holed from the start: Lake starts (Redis is a cache), serves,
    and stops without waiting on it."""
    redis_proxy.blackhole()
    manager = await aresolve(create_container(proxied_settings).manager)
    await manager.start()
    try:
        await manager.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
        assert await values(manager) == [1.0]
        assert (await manager.health()).ready
    finally:
        started = time.monotonic()
        await manager.stop()
        assert time.monotonic() - started < proxied_settings["grpc"]["grace"] + 2
