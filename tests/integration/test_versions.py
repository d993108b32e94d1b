"""
Cache versions read in batches on their own connection: read-your-writes across
instances, fewer queries than reads, and the pool as a fallback.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from lake.container import aresolve, create_container
from lake.models import series_scope
from lake.operations import Point, QueryPoints, WritePoints
from tests.waiting import eventually

T0 = datetime.now(UTC) - timedelta(hours=2)
SCOPE = series_scope("cpu")


async def started(settings):
    container = create_container(settings)
    manager = await aresolve(container.manager)
    await manager.start()
    return container, manager


def query() -> QueryPoints:
    return QueryPoints("t1", "cpu", T0, T0 + timedelta(hours=1), limit=10_000)


async def test_write_on_one_instance_is_read_on_the_other_at_once(lake_settings):
    """Every write acknowledged by A is in B's very next (cacheable) read."""
    (ca, a), (cb, b) = await started(lake_settings), await started(lake_settings)
    caches = {a: await ca.cache(), b: await cb.cache()}
    try:
        for i in range(40):
            writer, reader = (a, b) if i % 2 else (b, a)
            await reader.coordinate(query())  # cache the current answer
            await caches[reader].drain()  # its write-back runs after the answer
            ts = T0 + timedelta(seconds=i)
            await writer.coordinate(WritePoints("t1", "cpu", [Point(ts, float(i))]))
            page = await reader.coordinate(query())
            assert len(page.points) == i + 1, f"stale read after write {i}"
            await caches[reader].drain()  # the next reader may hit this entry
        assert caches[b].hits > 0  # the cache served the repeated reads
        versions = await cb.versions()
        assert versions.stats()["batches"] > 0
    finally:
        await a.stop()
        await b.stop()


async def test_a_lake_that_only_writes_counts_its_peers(lake_settings):
    """A Lake that only writes (an ingest) counts the other Lakes on its database
    all the same: alone, its writes wait no lease after the first; once a second
    Lake runs, they wait it."""
    container, alone = await started(lake_settings)
    reader = await container.versions()
    lease = reader.lease
    other = None
    try:
        await alone.coordinate(WritePoints("t1", "cpu", [Point(T0, 1.0)]))
        await eventually(lambda: lease.peers == 0)
        assert lease.write_wait() == 0.0
        assert reader.stats()["reads"] == 0  # no read started the poller
        _, other = await started(lake_settings)
        # Its version connection opens with its first write (or read).
        await other.coordinate(WritePoints("t1", "cpu", [Point(T0, 2.0)]))
        await eventually(lambda: lease.peers == 1)
        assert lease.write_wait() == lease.lease > 0
    finally:
        await alone.stop()
        if other is not None:
            await other.stop()


async def _leased_pair(settings):
    """Two instances whose leases are warm and which have counted each other."""
    (ca, a), (cb, b) = await started(settings), await started(settings)
    va, vb = await ca.versions(), await cb.versions()

    async def warm() -> bool:
        await a.coordinate(query())  # reads keep the polls at their fast pace
        await b.coordinate(query())
        return all(v.lease.fresh() and v.lease.peers >= 1 for v in (va, vb))

    await eventually(warm, within=15.0, every=0.05)
    return (ca, a, va), (cb, b, vb)


async def test_leased_reads_see_the_other_instance_writes_at_once(lake_settings):
    """With both leases fresh, reads ask PostgreSQL nothing, writes wait for the
    other's lease, and every write acknowledged by A is in B's next read."""
    (ca, a, va), (cb, b, vb) = await _leased_pair(lake_settings)
    caches = {a: await ca.cache(), b: await cb.cache()}
    leased = {a: va.lease.leased, b: vb.lease.leased}
    try:
        assert va.lease.write_wait() > 0  # B holds a lease: A's writes wait
        for i in range(20):
            writer, reader = (a, b) if i % 2 else (b, a)
            await reader.coordinate(query())
            await caches[reader].drain()
            ts = T0 + timedelta(seconds=i)
            await writer.coordinate(WritePoints("t1", "cpu", [Point(ts, float(i))]))
            page = await reader.coordinate(query())
            assert len(page.points) == i + 1, f"stale read after write {i}"
        assert va.lease.leased > leased[a]  # answered from the lease, no query
        assert vb.lease.leased > leased[b]
    finally:
        await a.stop()
        await b.stop()


async def test_a_long_transaction_does_not_hide_its_change_from_the_lease(
    lake_settings,
):
    """A generation changed by a transaction that began before several polls and
    commits after them still reaches the lease (polls start at the snapshot xmin,
    not at the last change seen)."""
    container, manager = await started(lake_settings)
    versions = await container.versions()
    database = await container.database()
    lease = versions.lease
    try:
        await manager.coordinate(WritePoints("t1", "cpu", [Point(T0, 1.0)]))

        async def warm() -> bool:
            await manager.coordinate(query())
            return lease.fresh() and database.leased_version("t1", SCOPE) is not None

        await eventually(warm, within=15.0, every=0.05)
        before = database.leased_version("t1", SCOPE)
        conn = await asyncpg.connect(
            lake_settings["postgres"]["dsn"],
            password=lake_settings["postgres"]["password"] or None,
        )
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute(
                "UPDATE cache_generations SET gen = gen + 1"
                " WHERE tenant_id = 't1' AND scope = $1",
                SCOPE,
            )
            polls = lease.polls

            async def polled_past() -> bool:
                await manager.coordinate(query())
                return bool(lease.polls >= polls + 5)

            await eventually(polled_past, within=10.0)
            assert database.leased_version("t1", SCOPE) == before  # not committed
            await tx.commit()
        finally:
            await conn.close()

        async def moved() -> bool:
            await manager.coordinate(query())
            now = database.leased_version("t1", SCOPE)
            return now is not None and now != before

        await eventually(moved, within=5.0)
    finally:
        await manager.stop()


async def test_concurrent_reads_share_version_queries(container, manager):
    """Many reads at once are answered by fewer version queries than reads."""
    await manager.coordinate(WritePoints("t1", "cpu", [Point(T0, 1.0)]))
    versions = await container.versions()
    before = versions.stats()
    await asyncio.gather(*(manager.coordinate(query()) for _ in range(64)))
    after = versions.stats()
    reads = after["reads"] - before["reads"]
    batches = after["batches"] - before["batches"]
    assert reads == 64
    assert batches < reads


async def test_a_failing_version_connection_falls_back_to_the_pool(container, manager):
    """With the reader unable to connect, reads stay fresh through the pool, the
    failure is logged, and the reader comes back once it can connect again."""
    await manager.coordinate(WritePoints("t1", "cpu", [Point(T0, 1.0)]))
    versions = await container.versions()
    await manager.coordinate(query())
    connect = versions._connect

    async def refused():
        raise ConnectionRefusedError

    versions._connect = refused
    versions._conn.terminate()  # the server or the network dropped it
    batches = versions.stats()["batches"]
    with structlog.testing.capture_logs() as logs:
        for i in range(1, 4):  # each read after a write sees it
            ts = T0 + timedelta(seconds=i)
            await manager.coordinate(WritePoints("t1", "cpu", [Point(ts, float(i))]))
            page = await manager.coordinate(query())
            expected = [1.0, *(float(j) for j in range(1, i + 1))]
            assert [p.value for p in page.points] == expected
    assert not versions.usable
    assert versions.stats()["batches"] == batches  # the pool answered
    assert any(e["event"] == "cache_versions_failed" for e in logs)
    versions._connect = connect
    await eventually(lambda: versions.usable, within=5.0)  # after retry_after
    await manager.coordinate(query())
    assert versions.stats()["batches"] == batches + 1


async def test_health_measures_the_database_not_the_pool_queue(lake_settings):
    """Every pooled connection held by callers: the checks still answer UP through
    their own connection, and Lake stays ready (the pool's queue is not an
    outage)."""
    lake_settings["postgres"].update(min_size=2, max_size=2, acquire_timeout=5.0)
    container, manager = await started(lake_settings)
    database = await container.database()
    release = asyncio.Event()
    held = asyncio.Event()
    holders = 0

    async def hold(tenant: str) -> None:
        nonlocal holders
        # One tenant may hold half the pool (fair shares): two tenants fill it.
        async with database.connection(tenant):
            holders += 1
            if holders == 2:
                held.set()
            await release.wait()

    tasks = [asyncio.create_task(hold(t)) for t in ("a", "b")]
    try:
        await held.wait()  # both pooled connections are taken
        report = await manager.health()
        statuses = {c.name: c.status.name for c in report.components}
        assert statuses["postgres"] == "UP", report
        assert statuses["timeseries"] == "UP", report
        assert statuses["spatial"] == "UP", report
        assert statuses["vectors"] == "UP", report
        assert report.ready
    finally:
        release.set()
        await asyncio.gather(*tasks)
        await manager.stop()
