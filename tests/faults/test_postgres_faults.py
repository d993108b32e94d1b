"""
PostgreSQL misbehaving under a running Lake (F2, F4-F7, F9-F11 of the field notes),
injected with the fault proxy between Lake and the session's server.

Each test asserts what callers see (the gRPC code their error maps to), that every
call ends within its deadline plus a generous slack, and that acknowledged writes are
all there afterwards, once each.
"""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import datetime, timedelta
from functools import partial

import asyncpg
import grpc
import pytest

from lake.api.errors import status_of
from lake.container import aresolve, create_container
from lake.deadline import deadline_scope
from lake.errors import CircuitOpenError, LakeError
from lake.health import Status
from lake.operations import Point, QueryPoints, WritePoints
from lake.protection import BreakerState
from lake.resources.embedded import free_port
from tests.faults.conftest import T0
from tests.waiting import eventually

SLACK = 2.0  # generous: a loaded 2-core CI machine


def at(i: int) -> datetime:
    return T0 + timedelta(milliseconds=i)


def query(tenant: str = "t1", limit: int = 10_000) -> QueryPoints:
    # Distinct limits make distinct cache keys: each call reaches PostgreSQL.
    return QueryPoints(tenant, "m", T0, T0 + timedelta(hours=1), limit=limit)


async def write(lake, i: int, tenant: str = "t1", value: float = 1.0) -> None:
    await lake.coordinate(WritePoints(tenant, "m", [Point(at(i), value)]))


async def timed_failure(call, deadline: float) -> tuple[grpc.StatusCode, float]:
    """Run ``call`` within ``deadline``: the code its error maps to, and how long
    it took. Fails if it succeeded."""
    started = time.monotonic()
    with deadline_scope(deadline), pytest.raises(LakeError) as info:
        await call()
    return status_of(info.value)[0], time.monotonic() - started


async def stored(lake, tenant: str = "t1", limit: int = 10_000) -> list[datetime]:
    page = await lake.coordinate(query(tenant, limit))
    return [p.ts for p in page.points]


async def admin(database: str, servers):
    """A direct connection (not through the proxy) to the test's database."""
    return await asyncpg.connect(database, password=servers["postgres"].password)


# --- F2: PostgreSQL down --------------------------------------------------------------


async def test_f02_postgres_down_unavailable_within_deadline(
    lake, pg_proxy, proxied_settings, proxied_container
):
    """PostgreSQL gone (open connections reset, new ones refused): every call gets
    UNAVAILABLE within its deadline after at most operations.attempts connection
    attempts; health is DOWN, not ready; once it is back the same Lake serves."""
    await write(lake, 0)
    real = pg_proxy.upstream
    pg_proxy.upstream = ("127.0.0.1", free_port())  # the proxy counts each attempt
    pg_proxy.reset()
    before = pg_proxy.stats.refused
    calls = 5
    for i in range(1, calls + 1):
        code, took = await timed_failure(lambda i=i: write(lake, i), 1.0)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert took < 1.0 + SLACK
    attempts = pg_proxy.stats.refused - before
    # At most every call's attempts (3 each); the retry budget and the breaker
    # spend fewer, never more.
    assert 1 <= attempts <= calls * proxied_settings["operations"]["attempts"]
    report = await lake.health()
    assert report.component("postgres").status is not Status.UP
    assert not report.ready
    # After the minimum number of calls the breaker opens: then calls fail at once
    # with a pushback and make no connection attempt (attempts stop growing).
    breaker = proxied_container.protection().postgres.breaker
    for i in range(10, 40):
        if breaker.state is BreakerState.OPEN:
            break
        await timed_failure(lambda i=i: write(lake, i), 1.0)
    assert breaker.state is BreakerState.OPEN
    attempts = pg_proxy.stats.refused
    for i in range(50, 70):
        started = time.monotonic()
        with pytest.raises(CircuitOpenError) as refused:
            await write(lake, i)
        assert time.monotonic() - started < SLACK
        assert refused.value.retry_after_s is not None
        assert refused.value.retry_after_s > 0
    assert pg_proxy.stats.refused == attempts  # not one connection attempt
    pg_proxy.upstream = real
    await eventually(lambda: _succeeds(lake, 99), within=5)
    assert (await lake.health()).ready


async def _succeeds(lake, i: int) -> bool:
    try:
        await write(lake, i)
    except LakeError:
        return False
    return True


# --- F4: black-holed PostgreSQL -------------------------------------------------------


async def test_f04_blackholed_postgres_every_call_ends_within_its_deadline(
    lake, pg_proxy, proxied_container
):
    """Nothing comes back: reads and writes end within deadline + slack (never
    hang), health answers within its check timeout; after restore the pool serves
    again and stays within its bounds."""
    await write(lake, 0)
    pg_proxy.blackhole()
    calls = [lambda: write(lake, 1), lambda: lake.coordinate(query(limit=11))]
    for call in calls * 2:
        code, took = await timed_failure(call, 1.0)
        assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert took < 1.0 + SLACK
    started = time.monotonic()
    report = await lake.health()
    assert time.monotonic() - started < 0.5 + SLACK
    assert report.component("postgres").status is not Status.UP
    pg_proxy.clear()
    await eventually(lambda: _succeeds(lake, 2), within=5)
    got = await stored(lake)  # the write cut off by the black hole: either way
    assert {at(0), at(2)} <= set(got)
    assert len(got) == len(set(got))
    database = await aresolve(proxied_container.database)
    metrics = database.metrics()
    assert metrics["size"] <= metrics["max_size"]


async def test_f04_stop_with_postgres_silent_ends_within_the_grace(
    proxied_settings, pg_proxy
):
    """Stopping while PostgreSQL is black-holed: the pool's goodbye gets no answer,
    yet stop() ends within the grace (connections terminated, nothing unclosed)."""
    settings = copy.deepcopy(proxied_settings)
    settings["grpc"]["grace"] = 1.0
    manager = await aresolve(create_container(settings).manager)
    await manager.start()
    await write(manager, 0)
    pg_proxy.blackhole()
    started = time.monotonic()
    await manager.stop()
    assert time.monotonic() - started < 1.0 + SLACK
    pg_proxy.clear()


# --- F5: slow PostgreSQL --------------------------------------------------------------


async def test_f05_slow_postgres_adaptive_timeout_rises_then_settles_back(
    proxied_settings, pg_proxy, redis_proxy
):
    """300 +- 30 ms on every reply: a read whose query used to take milliseconds is
    cut at its adaptive timeout (the floor, 0.5 s here), which triples with each cut,
    never past its ceiling (operations.timeout); while it climbs a read may fail
    UNAVAILABLE (a cut read's connection is discarded, and a new one takes ~3 s
    over this link), then reads succeed again. Writes are never cut. Once the link
    is fast again the timeout settles back to its floor."""
    # A new connection over this link takes ~3 s: more than FAST's bounds.
    proxied_settings["postgres"]["acquire_timeout"] = 5.0
    proxied_settings["postgres"]["connect_timeout"] = 5.0
    proxied_settings["operations"]["timeout"] = 10.0
    # A read's query (three round trips, ~0.9 s here) must outlive the floor.
    proxied_settings["protection"]["timeouts"]["floor_s"] = 0.5
    container = create_container(proxied_settings)
    lake = await aresolve(container.manager)
    await lake.start()
    try:
        tracker = container.protection().postgres.timeouts("QueryPoints")
        await write(lake, 0)
        for i in range(40):  # distinct limits: each read reaches PostgreSQL
            await stored(lake, limit=1000 + i)
        assert tracker.timeout(None) == 0.5  # settled on its floor
        pg_proxy.latency(300, jitter_ms=30, direction="down")
        with deadline_scope(10.0):
            await write(lake, 1)  # ~1.5 s, never cut by a guessed timeout
        outcomes = []
        for i in range(4):
            try:
                with deadline_scope(10.0):
                    found = await stored(lake, limit=100 + i)
            except LakeError as exc:
                outcomes.append(status_of(exc)[0])
            else:
                assert at(1) in found
                outcomes.append(grpc.StatusCode.OK)
        assert outcomes[-1] == grpc.StatusCode.OK, outcomes
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        assert tracker.timeouts >= 1  # the first slow read was cut...
        assert 1.5 <= tracker.timeout(None) <= 10.0  # ...and the timeout rose
        pg_proxy.clear()
        for i in range(300):  # fast again: the slow samples leave the ring
            await stored(lake, limit=2000 + i)
        assert tracker.timeout(None) == 0.5
    finally:
        for proxy in (pg_proxy, redis_proxy):
            await proxy.enable()
        await lake.stop()


async def test_f05_bandwidth_capped_postgres_big_read_ends_within_deadline(
    lake, pg_proxy
):
    """A 20 kB/s link and a page of 3,000 points (several seconds to transfer): the
    read ends DEADLINE_EXCEEDED within its deadline + slack; uncapped, the same
    read succeeds on the pool again."""
    await lake.coordinate(
        WritePoints("t1", "m", [Point(at(i), float(i)) for i in range(3000)])
    )
    pg_proxy.bandwidth(20_000, direction="down")
    code, took = await timed_failure(lambda: stored(lake, limit=5000), 1.0)
    assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert took < 1.0 + SLACK
    pg_proxy.clear()
    with deadline_scope(5.0):
        assert len(await stored(lake, limit=5001)) == 3000


# --- F6: RST during writes ------------------------------------------------------------


async def test_f06_resets_during_writes_lose_and_duplicate_nothing(lake, pg_proxy):
    """Connections reset while four writers run batches of 20 points (COPY, then a
    merge): each writer retries a failed batch with the same ids until it is
    acknowledged; afterwards every acknowledged point is stored, once."""
    acked: list[datetime] = []
    failures: list[grpc.StatusCode] = []

    async def writer(w: int) -> None:
        for n in range(25):
            batch = [at(w * 10_000 + n * 20 + j) for j in range(20)]
            op = WritePoints("t1", "m", [Point(ts, 1.0) for ts in batch])
            for _ in range(10):  # the caller's own retry, same ids
                try:
                    await lake.coordinate(op)
                except LakeError as exc:
                    failures.append(status_of(exc)[0])
                    continue
                acked.extend(batch)
                break

    async def resetter() -> None:
        for k in range(1, 6):
            await eventually(partial(_at_least, acked, k * 300))
            pg_proxy.reset()

    await asyncio.gather(resetter(), *(writer(w) for w in range(4)))
    assert pg_proxy.stats.resets >= 5
    # Indeterminate outcomes, both retried by the caller with the same ids.
    assert set(failures) <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    assert len(acked) == 4 * 25 * 20
    got = await stored(lake)
    assert len(got) == len(set(got))  # none twice
    assert set(acked) <= set(got)  # none lost
    assert len(got) == len(acked)  # and nothing else


def _at_least(items: list[datetime], n: int) -> bool:
    return len(items) >= n


# --- F7: reply cut mid-way ------------------------------------------------------------


async def test_f07_cut_reply_is_an_error_or_the_whole_answer(lake, pg_proxy):
    """A reply cut after a few bytes: the read fails (UNAVAILABLE), or (retried on
    a fresh connection) returns every point; never a partial page."""
    await lake.coordinate(
        WritePoints("t1", "m", [Point(at(i), float(i)) for i in range(300)])
    )
    everything = [at(i) for i in range(300)]
    outcomes = []
    for n, limit in enumerate(range(500, 520)):
        pg_proxy.cut_after(40 + 37 * n, once=True)
        try:
            got = await stored(lake, limit=limit)
        except LakeError as exc:
            outcomes.append(status_of(exc)[0])
        else:
            assert got == everything  # whole, or not at all
            outcomes.append(grpc.StatusCode.OK)
    assert pg_proxy.stats.cuts >= 1
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    # Every reply cut: every read fails, none returns part of the page.
    pg_proxy.cut_after(300, once=False)
    for limit in range(600, 603):
        code, _ = await timed_failure(lambda limit=limit: stored(lake, limit=limit), 2)
        assert code == grpc.StatusCode.UNAVAILABLE
    pg_proxy.clear()
    await eventually(lambda: _succeeds(lake, 9999), within=5)


# --- F9: statement timeout ------------------------------------------------------------


async def test_f09_statement_timeout_is_deadline_exceeded_and_not_retried(
    lake, database, servers
):
    """A write stuck on a lock past its deadline: DEADLINE_EXCEEDED within deadline
    + slack, no retry (one statement cancelled by the server), and the pool's
    connections are healthy afterwards."""
    await write(lake, 0)
    conn = await admin(database, servers)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE ts_data IN ACCESS EXCLUSIVE MODE")
        code, took = await timed_failure(lambda: write(lake, 1), 0.5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert took < 0.5 + SLACK
        # The server stops the statement too (its statement timeout is what was
        # left of the deadline): nothing waits on the lock for long.
        await eventually(partial(_lock_waiters_gone, conn), within=SLACK)
        await tx.rollback()
    finally:
        await conn.close()
    for i in range(2, 10):  # every pooled connection is usable again
        await write(lake, i)
    assert at(1) not in await stored(lake)


async def _lock_waiters_gone(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting == 0)


# --- F10: pool exhaustion -------------------------------------------------------------


async def test_f10_exhausted_pool_is_resource_exhausted_promptly_and_not_retried(
    lake, database, servers, proxied_container
):
    """Every pooled connection held (writes of two tenants stuck on a lock; one
    tenant may hold half the pool): one more call gets RESOURCE_EXHAUSTED after
    the acquire timeout, tried once."""
    db = await aresolve(proxied_container.database)
    size = db.metrics()["max_size"]
    tenants = ["t1", "t2"] * (size // 2)
    # T0's day partition and the quota overrides loaded before the lock: within
    # two hours after midnight T0 is yesterday, whose partition a first write
    # creates (DDL that would wait on the lock with a pooled connection).
    await write(lake, 0, "t1")
    await write(lake, 1, "t2")
    conn = await admin(database, servers)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE ts_data IN ACCESS EXCLUSIVE MODE")
        holders = [
            asyncio.create_task(_write_within(lake, 100 + i, 5.0, tenant))
            for i, tenant in enumerate(tenants)
        ]
        await eventually(lambda: db.metrics()["in_use"] == size)
        before = db.metrics()["acquire_timeouts"]
        code, took = await timed_failure(lambda: stored(lake, limit=77), 3.0)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert took < 0.5 + SLACK  # the acquire timeout, not the deadline
        assert db.metrics()["acquire_timeouts"] == before + 1  # not retried
        await tx.rollback()
    finally:
        await conn.close()
    assert await asyncio.gather(*holders) == [True] * len(tenants)


async def _write_within(lake, i: int, seconds: float, tenant: str = "t1") -> bool:
    with deadline_scope(seconds):
        await write(lake, i, tenant)
    return True


# --- F11: cancel during a query -------------------------------------------------------


async def test_f11_cancelled_queries_leave_no_tenant_behind(
    lake, database, servers, proxied_container
):
    """Queries cancelled mid-way (deadline, and the caller's task cancelled) leave
    nothing on the pool: the next 100 queries each see only their own tenant's
    data, and no pooled connection carries a tenant or role."""
    await write(lake, 1, tenant="ta", value=1.0)
    await write(lake, 2, tenant="tb", value=2.0)
    conn = await admin(database, servers)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE ts_data IN ACCESS EXCLUSIVE MODE")
        for n in range(3):
            await timed_failure(lambda n=n: stored(lake, "ta", limit=300 + n), 0.3)
        stuck = [
            asyncio.create_task(lake.coordinate(query("ta", limit=400 + n)))
            for n in range(3)
        ]
        db = await aresolve(proxied_container.database)
        await eventually(lambda: db.metrics()["in_use"] >= 1)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        await tx.rollback()
    finally:
        await conn.close()
    for n in range(100):
        tenant = ("ta", "tb")[n % 2]
        page = await lake.coordinate(query(tenant, limit=1000 + n))
        assert [p.value for p in page.points] == [1.0 if tenant == "ta" else 2.0]
    async with db.connection() as pooled:
        tenant_left = await pooled.fetchval(
            "SELECT current_setting('app.tenant_id', true)"
        )
        role = await pooled.fetchval("SELECT current_user")
    assert tenant_left in (None, "")
    assert role != "lake_app"


async def test_f09_lock_timeout_is_aborted_and_not_retried(
    lake, database, servers, proxied_container
):
    """A lock_timeout set by the operator (here on the database) that a write runs
    into: ABORTED, tried once, and the connection is fine afterwards."""
    await write(lake, 0)
    conn = await admin(database, servers)
    try:
        await conn.execute(
            f'ALTER DATABASE "{database.rsplit("/", 1)[1]}" SET lock_timeout = 100'
        )
        db = await aresolve(proxied_container.database)
        await db.refresh_connections()  # new sessions pick the setting up
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE ts_data IN ACCESS EXCLUSIVE MODE")
        code, took = await timed_failure(lambda: write(lake, 1), 5.0)
        await tx.rollback()
    finally:
        await conn.close()
    assert code == grpc.StatusCode.ABORTED
    assert took < 5.0  # the lock timeout ended it, not the deadline
    await write(lake, 2)
    assert at(1) not in await stored(lake)
