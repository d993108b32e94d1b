"""
Redis high availability: Lake on a Redis Cluster (three masters, a replica each)
and on a Sentinel set (a master, two replicas, three sentinels), a master killed
-9 under load (``tests/faults/redis_ha.py``).

Two Lake instances share one database and the Redis; a writer replaces a point's
value on one while readers read it on both. Through the failover: no call fails,
no read returns a value older than the last write acknowledged before it began
(the cache degrades to misses, answered from PostgreSQL), quota'd reads are
admitted (counted locally while their Redis is away), and once the replica has
taken over the instances hit the cache in Redis again and a shared quota is exact.
The Sentinel test also plants an entry an out-of-date promoted replica would hold,
and shows it rejected by its version.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerSecond
from redis.crc import key_slot

from lake.codec import cache_key
from lake.container import Container, aresolve, create_container
from lake.errors import LakeError, QuotaExceededError
from lake.health import Status
from lake.manager import ServiceManager
from lake.models import Feature
from lake.operations import (
    AggregatePoints,
    FeaturesNearest,
    Point,
    QueryPoints,
    UpsertFeatures,
    WritePoints,
)
from lake.quotas.rates import QUOTA_PREFIX
from lake.routes import ROUTES
from tests.faults import redis_ha
from tests.faults.conftest import FAST, T0
from tests.waiting import eventually

WINDOW_S = 60  # no budget refills during a test
BUDGET = 6  # calls per window for the exact quota
BUSY_RATE = 1000.0  # per second: the readers' own quota, never reached
HOUR = timedelta(hours=1)


def query(tenant: str) -> QueryPoints:
    return QueryPoints(tenant, "m", T0, T0 + timedelta(hours=1))


def latest(tenant: str) -> AggregatePoints:
    # Another route than the load's: each route's policy judges from its own
    # costs whether caching pays, and this one is fresh (always cached at first),
    # so that a hit says Redis answers, not what the load's costs looked like.
    return AggregatePoints(tenant, "m", T0, T0 + timedelta(hours=1), HOUR, "last")


def key_of(op: Any) -> str:
    scope = ROUTES[type(op)].scope
    assert scope is not None
    return cache_key(op.tenant, scope(op), op)


def cache_slot(op: Any) -> int:
    return key_slot(key_of(op).encode())


def quota_slot(namespace: str, tenant: str, rate: float) -> int:
    # As RateQuotas makes its limit items.
    item = RateLimitItemPerSecond(max(1, math.ceil(rate * WINDOW_S)), WINDOW_S)
    key = item.key_for(namespace, tenant, "read")
    return key_slot(f"{QUOTA_PREFIX}:{{{key}}}".encode())


def on_redis(base: dict[str, Any], **redis: str) -> dict[str, Any]:
    values = copy.deepcopy(base)
    for (section, key), value in FAST.items():
        values[section][key] = value
    values["redis"].update(password=redis_ha.PASSWORD, **redis)
    values["quotas"].update(window_s=WINDOW_S, lease=0.0)  # every hit asks Redis
    return values


@dataclass
class Lakes:
    """Two started instances on one database and one Redis."""

    a: ServiceManager
    b: ServiceManager
    containers: list[Container]

    async def set_quota(self, tenant: str, rate: float) -> None:
        """Set ``tenant``'s read rate; both instances apply it now."""
        store = await aresolve(self.containers[0].quota_store)
        await store.set(tenant, {"read_per_s": rate})
        for container in self.containers:
            await (await aresolve(container.quotas)).refresh()

    async def namespace(self) -> str:
        return await (await aresolve(self.containers[0].quota_store)).namespace()

    async def cache(self, manager: ServiceManager) -> dict[str, Any]:
        stats = (await manager.status()).cache
        assert stats is not None
        return dict(stats)


@asynccontextmanager
async def lakes(values: dict[str, Any]) -> AsyncIterator[Lakes]:
    async with AsyncExitStack() as stack:
        containers = [create_container(values) for _ in range(2)]
        managers = []
        for container in containers:
            manager: ServiceManager = await aresolve(container.manager)
            await manager.start()
            stack.push_async_callback(manager.stop)
            managers.append(manager)
        yield Lakes(managers[0], managers[1], containers)


@dataclass
class Load:
    """One writer replacing the value of ``tenant``'s point on A, readers on A
    and B checking every read against the writes acknowledged before it."""

    lakes: Lakes
    tenant: str
    acked: int = 0
    reads: int = 0
    stale: list[tuple[int, float]] = field(default_factory=list)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self) -> None:
        value = self.acked
        while not self.stop.is_set():
            value += 1
            try:
                await self.lakes.a.coordinate(
                    WritePoints(self.tenant, "m", [Point(T0, float(value))])
                )
            except LakeError as exc:
                self.failed[f"write {type(exc).__name__}"] += 1
            else:
                self.acked = value
            await asyncio.sleep(0.02)  # pace: reads between writes can hit

    async def read(self, manager: ServiceManager) -> None:
        while not self.stop.is_set():
            floor = self.acked
            try:
                page = await manager.coordinate(query(self.tenant))
            except LakeError as exc:
                self.failed[f"read {type(exc).__name__}"] += 1
                continue
            self.reads += 1
            value = page.points[0].value
            if value < floor:
                self.stale.append((floor, value))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        await self.lakes.a.coordinate(WritePoints(self.tenant, "m", [Point(T0, 0.0)]))
        tasks = [
            asyncio.create_task(self.write()),
            *(asyncio.create_task(self.read(m)) for m in (self.lakes.a, self.lakes.b)),
            *(asyncio.create_task(self.read(m)) for m in (self.lakes.a, self.lakes.b)),
        ]
        try:
            yield self
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


async def redis_hit_on_b(lakes: Lakes, tenant: str) -> bool:
    """A writes and reads (its miss stores the new entry in Redis); B, whose own
    copy is of the old version, then hits Redis for it."""
    before = (await lakes.cache(lakes.b))["hits"]
    value = float(time.monotonic())
    await lakes.a.coordinate(WritePoints(tenant, "m", [Point(T0, value)]))
    await lakes.a.coordinate(latest(tenant))
    await (await aresolve(lakes.containers[0].cache)).drain()  # A's SET is done
    buckets = await lakes.b.coordinate(latest(tenant))
    assert buckets[0].value == value
    return bool((await lakes.cache(lakes.b))["hits"] > before)


async def exact_quota(lakes: Lakes, tenant: str) -> collections.Counter[str]:
    """15 reads of ``tenant`` alternating between A and B, BUDGET per window."""
    await lakes.set_quota(tenant, BUDGET / WINDOW_S)
    outcomes: collections.Counter[str] = collections.Counter()
    for i in range(15):
        try:
            await (lakes.a if i % 2 else lakes.b).coordinate(query(tenant))
        except QuotaExceededError:
            outcomes["refused"] += 1
        else:
            outcomes["ok"] += 1
    return outcomes


def tenant_where(good: Callable[[str], bool]) -> str:
    return next(t for t in (f"t{i}" for i in range(1000)) if good(t))


def report(name: str, load: Load, timings: dict[str, float], **extra: Any) -> None:
    figures = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    print(
        f"\n{name}: {figures} after the kill; {load.reads} reads and {load.acked}"
        f" writes, {sum(load.failed.values())} failed, {len(load.stale)} stale; {extra}"
    )


async def test_a_cluster_master_killed_answers_stay_correct(lake_settings, tmp_path):
    """The master of the readers' cache key and quota keys is killed -9: no call
    fails and no read is stale while its replica takes the slots over; then B
    hits Redis for what A stored, health says redis UP, and a quota shared by
    both instances (its key on the promoted node) admits exactly its budget."""
    with redis_ha.cluster(tmp_path) as cluster:
        url = "redis://" + ",".join(cluster.seeds)
        async with lakes(on_redis(lake_settings, mode="cluster", url=url)) as two:
            namespace = await two.namespace()
            doomed = cluster.master_of(cache_slot(query("t0")))
            served = cluster.slots_of(doomed)
            owned = lambda slot: any(a <= slot <= b for a, b in served)  # noqa: E731
            reader = tenant_where(
                lambda t: (
                    owned(cache_slot(query(t)))
                    and owned(cache_slot(latest(t)))
                    and owned(quota_slot(namespace, t, BUSY_RATE))
                )
            )
            exact = tenant_where(
                lambda t: owned(quota_slot(namespace, t, BUDGET / WINDOW_S))
            )
            replica = cluster.replica_of(doomed)
            await two.set_quota(reader, BUSY_RATE)
            async with Load(two, reader).running() as load:
                await eventually(lambda: load.reads >= 200, within=20.0)
                killed = time.monotonic()
                await asyncio.to_thread(doomed.kill)

                def taken_over() -> bool:
                    return (
                        cluster.healthy()
                        and cluster.master_of(cache_slot(query(reader))) is replica
                    )

                await eventually(lambda: asyncio.to_thread(taken_over), within=30.0)
                promoted = time.monotonic() - killed
                assert (await two.a.health()).ready  # Redis is not critical
                during = load.reads
                await eventually(lambda: load.reads >= during + 200, within=20.0)
            await eventually(lambda: redis_hit_on_b(two, reader), within=20.0)
            hits_again = time.monotonic() - killed
            for manager in (two.a, two.b):
                await eventually(partial(_redis_up, manager), within=20.0)
            quota = await exact_quota(two, exact)
            stats = [await two.cache(m) for m in (two.a, two.b)]
    report(
        "redis cluster failover",
        load,
        {"replica promoted": promoted, "B hit Redis again": hits_again},
        cache_errors=[s["errors"] for s in stats],
        quota=dict(quota),
    )
    assert load.failed == {}
    assert load.stale == []
    assert quota == {"ok": BUDGET, "refused": 15 - BUDGET}


async def test_a_sentinel_master_killed_answers_stay_correct(lake_settings, tmp_path):
    """The master the sentinels watch is killed -9: no call fails and no read is
    stale until a replica is promoted; then B hits Redis again, a shared quota is
    exact, and an entry of an older version on the new master (what a promoted
    replica that missed the last writes holds) is refused by its version."""
    with redis_ha.sentinels(tmp_path) as watched:
        values = on_redis(
            lake_settings,
            mode="sentinel",
            url="redis://" + ",".join(watched.addresses) + "/0",
            sentinel_master=redis_ha.MASTER,
            sentinel_password=redis_ha.SENTINEL_PASSWORD,
        )
        async with lakes(values) as two:
            await two.set_quota("reader", BUSY_RATE)
            doomed = watched.master()
            async with Load(two, "reader").running() as load:
                await eventually(lambda: load.reads >= 200, within=20.0)
                killed = time.monotonic()
                await asyncio.to_thread(doomed.kill)

                def promoted_one() -> bool:
                    master = watched.master()
                    return master is not doomed and watched.agreed(master)

                await eventually(lambda: asyncio.to_thread(promoted_one), within=30.0)
                promoted = time.monotonic() - killed
                assert (await two.a.health()).ready
                during = load.reads
                await eventually(lambda: load.reads >= during + 200, within=20.0)
            await eventually(lambda: redis_hit_on_b(two, "reader"), within=20.0)
            hits_again = time.monotonic() - killed
            for manager in (two.a, two.b):
                await eventually(partial(_redis_up, manager), within=20.0)
            quota = await exact_quota(two, "exact")
            planted = await _older_entry_is_refused(two, watched.master())
            stats = [await two.cache(m) for m in (two.a, two.b)]
    report(
        "redis sentinel failover",
        load,
        {"replica promoted": promoted, "B hit Redis again": hits_again},
        cache_errors=[s["errors"] for s in stats],
        quota=dict(quota),
    )
    assert load.failed == {}
    assert load.stale == []
    assert quota == {"ok": BUDGET, "refused": 15 - BUDGET}
    assert planted


async def _redis_up(manager: ServiceManager) -> bool:
    report = await manager.health()
    return report.component("redis").status is Status.UP


async def _older_entry_is_refused(two: Lakes, master: redis_ha.Node) -> bool:
    """The new master holds the entry of an older version (as if the SET of the
    newer one had not reached it before the promotion): B reads the new value
    from PostgreSQL, a miss, never the old entry."""
    direct = aioredis.Redis(
        host="127.0.0.1", port=master.port, password=redis_ha.PASSWORD
    )
    a_cache = await aresolve(two.containers[0].cache)
    op = FeaturesNearest("planted", 0.0, 0.0, k=1)  # a fresh route again

    async def upsert(value: int) -> None:
        feature = Feature("f", 0.0, 0.0, {"v": value})
        await two.a.coordinate(UpsertFeatures("planted", [feature]))

    try:
        await upsert(1)
        await two.a.coordinate(op)
        await a_cache.drain()
        older = await direct.get(key_of(op))
        assert older is not None
        await upsert(2)
        await two.a.coordinate(op)  # stores the new version's entry...
        await a_cache.drain()
        await direct.set(key_of(op), older)  # ...which the promoted node lost
        before = await two.cache(two.b)
        matches = await two.b.coordinate(op)
        after = await two.cache(two.b)
    finally:
        await direct.aclose()
    fresh = matches[0].feature.properties["v"] == 2
    return bool(fresh and after["misses"] == before["misses"] + 1)
