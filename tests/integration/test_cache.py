"""
The read cache against real Redis: fresh after writes, harmless when Redis fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from lake.container import aresolve, create_container
from lake.operations import (
    Collection,
    CreateCollection,
    Point,
    QueryPoints,
    SearchVectors,
    UpsertVectors,
    VectorItem,
    WritePoints,
)
from lake.resources.embedded import EmbeddedRedis, free_port
from lake.stores.cache import RedisCache
from tests.servers import live_settings
from tests.waiting import eventually

T0 = datetime.now(UTC) - timedelta(hours=3)


async def started(settings):
    manager = await aresolve(create_container(settings).manager)
    await manager.start()
    return manager


async def test_repeated_read_is_served_from_redis(container, manager):
    """The second identical search is a cache hit."""
    await manager.coordinate(CreateCollection("t1", Collection("docs", 2)))
    await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0, 0.0])]))
    cache = await container.cache()
    op = SearchVectors("t1", "docs", [1.0, 0.0], k=5)
    first = await manager.coordinate(op)
    await cache.drain()  # the write-back runs after the answer
    hits = cache.hits
    second = await manager.coordinate(op)
    assert second == first
    assert cache.hits == hits + 1


async def test_read_after_write_is_never_stale_across_instances(lake_settings):
    """Instance A caches, instance B writes, A's next read sees the write."""
    a, b = await started(lake_settings), await started(lake_settings)
    try:
        await a.coordinate(CreateCollection("t1", Collection("docs", 2)))
        await a.coordinate(UpsertVectors("t1", "docs", [VectorItem("x", [1.0, 0.0])]))
        op = SearchVectors("t1", "docs", [1.0, 0.0], k=5)
        assert [m.id for m in await a.coordinate(op)] == ["x"]
        assert [m.id for m in await a.coordinate(op)] == ["x"]  # now cached
        await b.coordinate(UpsertVectors("t1", "docs", [VectorItem("y", [1.0, 0.01])]))
        assert sorted(m.id for m in await a.coordinate(op)) == ["x", "y"]

        q = QueryPoints("t1", "m", T0, T0 + timedelta(hours=1))
        await a.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
        assert [p.value for p in (await a.coordinate(q)).points] == [1.0]
        await b.coordinate(WritePoints("t1", "m", [Point(T0, 2.0)]))
        assert [p.value for p in (await a.coordinate(q)).points] == [2.0]
    finally:
        await a.stop()
        await b.stop()


@pytest.fixture
def own_redis(tmp_path):
    redis = EmbeddedRedis(tmp_path)
    endpoint = redis.start()
    try:
        yield redis, endpoint
    finally:
        redis.stop()


async def test_redis_stopped_mid_test_reads_still_succeed(servers, database, own_redis):
    """With Redis gone, every read succeeds from PostgreSQL, each within the bound;
    and a write made while it was gone is visible once it is back (no stale entry)."""
    redis, endpoint = own_redis
    settings = live_settings({**servers, "redis": endpoint}, database)
    timeout = settings["cache"]["timeout"]
    manager = await started(settings)
    try:
        q = QueryPoints("t1", "m", T0, T0 + timedelta(hours=1))
        await manager.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
        await manager.coordinate(q)  # cached under the current generation
        redis.stop()
        await manager.coordinate(WritePoints("t1", "m", [Point(T0, 2.0)]))
        for _ in range(20):
            started_at = time.perf_counter()
            page = await manager.coordinate(q)
            elapsed = time.perf_counter() - started_at
            assert [p.value for p in page.points] == [2.0]
            assert elapsed < timeout + 0.5  # the cache adds at most its timeout
        redis.start()  # same port, same data: the old entry is still in there
        await asyncio.sleep(settings["cache"]["cooldown_s"] + 0.1)
        page = await manager.coordinate(q)
        assert [p.value for p in page.points] == [2.0]
    finally:
        await manager.stop()


@pytest.fixture
async def blackhole() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held.append(writer)
        await reader.read(-1)

    port = free_port()
    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_silent_redis_costs_at_most_the_timeout(servers, database, blackhole):
    """A Redis that never answers: reads succeed, each adds at most the timeout,
    and once Redis's breaker opens the cache is skipped outright (F12)."""
    settings = live_settings(servers, database)
    settings["redis"].update(url=blackhole, password="")
    manager = await started(settings)
    try:
        await manager.coordinate(WritePoints("t1", "m", [Point(T0, 3.0)]))
        q = QueryPoints("t1", "m", T0, T0 + timedelta(hours=1))
        timings = []
        for _ in range(10):
            started_at = time.perf_counter()
            page = await manager.coordinate(q)
            timings.append(time.perf_counter() - started_at)
            assert [p.value for p in page.points] == [3.0]
        bound = settings["cache"]["timeout"] + 0.5
        assert max(timings) < bound, timings
        status = await manager.status()
        assert status.cache is not None
        # Recent entries are served from the process (version-checked) and Redis's
        # breaker opens after min_calls failures: few reads pay the timeout.
        assert status.cache["errors"] <= 6
        report = await manager.health()
        assert report.component("redis").reason == "redis did not answer PING"
        assert report.ready
    finally:
        await manager.stop()


async def version() -> str:
    return "ns:1"


@asynccontextmanager
async def session_cache(servers) -> AsyncIterator[tuple[aioredis.Redis, RedisCache]]:
    """A cache on the session's Redis. Its background write-backs finish before the
    client closes: one left running would open a connection the close never sees."""
    endpoint = servers["redis"]
    client = aioredis.Redis.from_url(endpoint.url, password=endpoint.password)
    cache = RedisCache(client, timeout=0.5)
    try:
        yield client, cache
    finally:
        await cache.drain()
        await client.aclose()


async def test_one_load_per_key_at_a_time(servers):
    """Twenty concurrent misses of one key run the loader once (no stampede)."""
    calls = 0

    async def load() -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return [1, 2, 3]

    key = f"lake:test:{time.monotonic_ns()}"
    async with session_cache(servers) as (_, cache):
        results = await asyncio.gather(
            *(cache.read_through(key, version, load, bytes, list) for _ in range(20))
        )
    assert calls == 1
    assert results == [[1, 2, 3]] * 20


async def test_a_cancelled_loader_does_not_fail_the_waiters(servers):
    """When the caller that loads is cancelled, a waiter loads for itself."""
    gate, loading = asyncio.Event(), asyncio.Event()
    fast_loads = 0

    async def slow() -> list[int]:
        loading.set()
        await gate.wait()
        return [9]

    async def fast() -> list[int]:
        nonlocal fast_loads
        fast_loads += 1
        return [7]

    key = f"lake:test:{time.monotonic_ns()}"
    async with session_cache(servers) as (_, cache):
        leader = asyncio.create_task(
            cache.read_through(key, version, slow, bytes, list)
        )
        await loading.wait()  # the leader holds the flight
        waiter = asyncio.create_task(
            cache.read_through(key, version, fast, bytes, list)
        )
        # The waiter counts its miss and then, without yielding, waits on the
        # leader's flight: once both misses are counted, it is waiting.
        await eventually(lambda: cache.misses == 2, within=5.0, every=0.001)
        assert fast_loads == 0  # it waited rather than loading itself
        leader.cancel()
        assert await waiter == [7]
        assert fast_loads == 1  # the leader's cancellation made it load for itself


async def test_a_recent_entry_is_served_in_process_but_never_stale(servers):
    """An entry this process wrote is served without a Redis GET while its version
    holds; once the version moves on, it is not served again."""
    current = "ns:1"
    gets = loads = 0

    async def now() -> str:
        return current

    async def load() -> list[int]:
        nonlocal loads
        loads += 1
        return [loads]

    key = f"lake:test:{time.monotonic_ns()}"
    async with session_cache(servers) as (client, cache):
        real_get = client.get

        async def counted_get(key):
            nonlocal gets
            gets += 1
            return await real_get(key)

        client.get = counted_get  # type: ignore[method-assign]
        assert await cache.read_through(key, now, load, _json, _unjson) == [1]
        await cache.drain()
        assert await cache.read_through(key, now, load, _json, _unjson) == [1]
        assert (gets, loads) == (1, 1)  # the second read asked only for the version
        current = "ns:2"  # a write moved the scope's version on
        assert await cache.read_through(key, now, load, _json, _unjson) == [2]
        assert loads == 2


def _json(value: list[int]) -> bytes:
    return repr(value).encode()


def _unjson(data: bytes) -> list[int]:
    return [int(x) for x in data.decode().strip("[]").split(",")]
