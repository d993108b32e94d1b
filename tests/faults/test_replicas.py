"""
Read replicas on real servers: a primary and a streaming standby from the embedded
binaries (``tests/faults/ha.py``, asynchronous replication), Lake with
``postgres.replica_dsns`` naming the standby.

Reads run on the replica (the standby's own scan counters and its connections say
so), writes on the primary, a read right after a write sees it on the writing
instance and on another one even while the replica's replay is paused, a replica
lagging past ``postgres.max_replica_lag`` leaves the rotation and returns, and a
killed replica fails no read.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from lake.container import aresolve, create_container
from lake.errors import LakeError
from lake.health import Status
from lake.manager import ServiceManager
from lake.models import Feature, Point
from lake.operations import FeaturesNearest, QueryPoints, UpsertFeatures, WritePoints
from lake.resources.embedded import Endpoint
from lake.resources.replicas import APPLICATION_NAME
from lake.stores.replicas import ReplicaSet
from tests.faults import ha
from tests.faults.conftest import FAST, T0
from tests.servers import live_settings, with_database
from tests.waiting import eventually

TENANT = "t1"


@pytest.fixture(scope="module")
def ends(tmp_path_factory) -> Iterator[ha.Pair]:
    """One primary and one asynchronous standby for the module's tests."""
    with ha.pair(tmp_path_factory.mktemp("replicas"), synchronous=False) as pair:
        yield pair


@pytest.fixture
async def db(ends) -> AsyncIterator[str]:
    """A fresh database on the primary (and so on the standby); its name."""
    name = f"lake_replica_{uuid.uuid4().hex[:10]}"
    conn = await ha.admin(ends.primary, ends.password)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def settings(servers, ends: ha.Pair, db: str, **postgres: Any) -> dict[str, Any]:
    """Lake on the primary with the standby as its replica, short bounds."""
    primary = with_database(ha.node_url(ends.primary), db)
    standby = with_database(ha.node_url(ends.standby), db)
    values = live_settings(
        {"postgres": Endpoint(primary, ends.password), "redis": servers["redis"]},
        primary,
    )
    for (section, key), value in FAST.items():
        values[section][key] = value
    values["postgres"].update(
        replica_dsns=[standby], replica_check_interval=0.1, **postgres
    )
    return values


@asynccontextmanager
async def lakes(values: dict[str, Any], count: int = 1) -> AsyncIterator[list[Any]]:
    """``count`` started Lake instances (containers) on the same settings."""
    async with AsyncExitStack() as stack:
        managers = []
        for _ in range(count):
            manager: ServiceManager = await aresolve(create_container(values).manager)
            await manager.start()
            stack.push_async_callback(manager.stop)
            managers.append(manager)
        yield managers


def replicas(manager: ServiceManager) -> ReplicaSet:
    c = manager.components
    assert c is not None
    assert isinstance(c.replicas, ReplicaSet)
    return c.replicas


def in_rotation(manager: ServiceManager) -> bool:
    return replicas(manager).replicas[0].in_rotation


async def caught_up(manager: ServiceManager, ends: ha.Pair) -> None:
    """Wait until the replica, as Lake last checked it, replayed all the primary
    has now."""
    conn = await ha.admin(ends.primary, ends.password)
    try:
        now = int(
            await conn.fetchval(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
            )
        )
    finally:
        await conn.close()
    replica = replicas(manager).replicas[0]
    await eventually(lambda: replica.in_rotation and replica.replayed >= now)


async def on_node(node: ha.Node, ends: ha.Pair, db: str, sql: str) -> Any:
    conn = await asyncpg.connect(
        with_database(ha.node_url(node), db), password=ends.password
    )
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


_SCANS = (
    "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)"
    " FROM pg_stat_user_tables WHERE relname = 'features'"
)
_REPLICA_CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity"  # noqa: S608 -- Lake's own constant
    f" WHERE application_name = '{APPLICATION_NAME}'"
    " AND datname = current_database()"
)


async def replay(ends: ha.Pair, paused: bool) -> None:
    conn = await ha.admin(ends.standby, ends.password)
    try:
        action = "pause" if paused else "resume"
        await conn.execute(f"SELECT pg_wal_replay_{action}()")
    finally:
        await conn.close()


def nearest(i: int, k: int = 3) -> FeaturesNearest:
    # A point of its own per call: every read is a cache miss, so a load.
    return FeaturesNearest(TENANT, lon=1.0 + i * 1e-5, lat=45.0, k=k)


async def test_reads_run_on_the_replica_and_writes_on_the_primary(servers, ends, db):
    """Features written through Lake land on the primary; 30 unique nearest-k reads
    afterwards all run on the replica: Lake counts them there, the standby's own
    scan counter of the table rises by at least as many, and the replica pool's
    connections are on the standby, none on the primary."""
    async with lakes(settings(servers, ends, db)) as (lake,):
        await eventually(lambda: in_rotation(lake), within=20.0)
        features = [Feature(f"f{i}", 1.0 + i * 1e-3, 45.0) for i in range(200)]
        assert await lake.coordinate(UpsertFeatures(TENANT, features)) == 200
        assert await on_node(ends.primary, ends, db, "SELECT count(*) FROM features")
        await caught_up(lake, ends)
        before_scans = await on_node(ends.standby, ends, db, _SCANS)
        before = dict(replicas(lake).routed)
        for i in range(30):
            found = await lake.coordinate(nearest(i))
            assert len(found) == 3
        routed = replicas(lake).routed
        assert routed["replica"] - before["replica"] == 30
        assert routed["fallback"] == before["fallback"]
        assert await on_node(ends.standby, ends, db, _REPLICA_CONNECTIONS) >= 1
        assert await on_node(ends.primary, ends, db, _REPLICA_CONNECTIONS) == 0
        stats = (await lake.status()).as_dict()["replicas"]
        assert stats["nodes"]["1"]["state"] == "in"
        assert stats["nodes"]["1"]["reads"] >= 30

    # Lake stopped: the standby's backends flushed their statistics as they ended.
    async def scanned_on_standby() -> bool:
        return bool(await on_node(ends.standby, ends, db, _SCANS) >= before_scans + 30)

    await eventually(scanned_on_standby, within=20.0)


async def test_a_write_is_read_at_once_on_every_instance_while_replay_is_paused(
    servers, ends, db
):
    """Two instances; the standby's replay paused (max_replica_lag high enough to
    keep it in rotation). Each round instance A moves a feature and both instances
    read it at once: always the new position, from the primary (the replica has
    not replayed the write). A series written (and read by B) before the pause is
    still read from the replica meanwhile. Resumed, reads of the moved feature go
    to the replica again, still fresh."""
    values = settings(servers, ends, db, max_replica_lag=120.0)
    async with lakes(values, count=2) as (a, b):
        await eventually(lambda: in_rotation(a) and in_rotation(b), within=20.0)
        await a.coordinate(UpsertFeatures(TENANT, [Feature("p", 10.0, 45.0)]))
        points = [Point(T0 + timedelta(seconds=s), float(s)) for s in range(50)]
        await a.coordinate(WritePoints(TENANT, "other", points, {}))
        await caught_up(b, ends)
        # B reads the series once: its fence is then the position it saw it at (a
        # scope an instance never read gets the strictest fence, the primary's
        # position now, which a paused replica never reaches).
        window = QueryPoints(TENANT, "other", T0, T0 + timedelta(hours=1), limit=50)
        assert len((await b.coordinate(window)).points) == 50
        await replay(ends, paused=True)
        try:
            for i in range(1, 11):
                lon = 10.0 + i * 0.01
                await a.coordinate(UpsertFeatures(TENANT, [Feature("p", lon, 45.0)]))
                for lake in (b, a):
                    (found,) = await lake.coordinate(
                        FeaturesNearest(TENANT, lon=lon, lat=45.0, k=1)
                    )
                    assert (found.feature.id, found.feature.lon) == ("p", lon)
            on_replica = replicas(b).routed["replica"]
            for limit in range(1, 6):  # distinct reads: loads, not cache hits
                window = QueryPoints(
                    TENANT, "other", T0, T0 + timedelta(hours=1), limit=limit
                )
                assert len((await b.coordinate(window)).points) == limit
            assert replicas(b).routed["replica"] - on_replica == 5
            assert replicas(a).routed["recent_write"] >= 10
            assert replicas(b).routed["recent_write"] >= 10
        finally:
            await replay(ends, paused=False)
        await caught_up(b, ends)
        on_replica = replicas(b).routed["replica"]
        (found,) = await b.coordinate(nearest(7, k=1))  # a new key: a load
        assert found.feature.id == "p"
        assert found.feature.lon == pytest.approx(10.1)
        assert replicas(b).routed["replica"] == on_replica + 1


async def test_a_replica_lagging_past_the_limit_leaves_the_rotation_and_returns(
    servers, ends, db
):
    """Replay paused while writes go on: once the replica is more than
    max_replica_lag behind it is out (health DEGRADED with the reason, status with
    its lag) and reads go to the primary, fresh; resumed, it catches up and
    serves reads again."""
    values = settings(servers, ends, db, max_replica_lag=0.5)
    async with lakes(values) as (lake,):
        await eventually(lambda: in_rotation(lake), within=20.0)
        stop = asyncio.Event()

        async def write() -> None:
            i = 0
            while not stop.is_set():
                ts = T0 + timedelta(microseconds=i)
                await lake.coordinate(WritePoints(TENANT, "w", [Point(ts, 1.0)], {}))
                i += 1
                await asyncio.sleep(0.02)  # a steady trickle, not a flood

        writer = asyncio.create_task(write())
        replica = replicas(lake).replicas[0]
        try:
            await replay(ends, paused=True)
            await eventually(lambda: replica.state == "lagging", within=20.0)
            assert not replica.in_rotation
            health = (await lake.health()).component("postgres.replica.1")
            assert health.status is Status.DEGRADED
            assert "out of rotation" in health.reason
            node = (await lake.status()).as_dict()["replicas"]["nodes"]["1"]
            assert node["lag_ms"] > 500
            before = dict(replicas(lake).routed)
            window = QueryPoints(TENANT, "w", T0, T0 + timedelta(hours=1), limit=100)
            written = len((await lake.coordinate(window)).points)
            assert written > 0
            assert replicas(lake).routed["no_replica"] == before["no_replica"] + 1
        finally:
            await replay(ends, paused=False)
            stop.set()
            await writer
        await eventually(lambda: replica.in_rotation, within=20.0)
        await caught_up(lake, ends)
        on_replica = replicas(lake).routed["replica"]
        window = QueryPoints(TENANT, "w", T0, T0 + timedelta(hours=1), limit=100_000)
        assert len((await lake.coordinate(window)).points) >= written
        assert replicas(lake).routed["replica"] == on_replica + 1
        assert (await lake.health()).component("postgres.replica.1").status is (
            Status.UP
        )


async def test_a_killed_replica_fails_no_read(servers, ends, db):
    """Four readers read without pause while the standby is killed (-m immediate):
    no read fails, the replica is taken out (down), reads go to the primary;
    started again, it returns to the rotation and serves reads."""
    async with lakes(settings(servers, ends, db)) as (lake,):
        await eventually(lambda: in_rotation(lake), within=20.0)
        features = [Feature(f"f{i}", 1.0 + i * 1e-3, 45.0) for i in range(50)]
        await lake.coordinate(UpsertFeatures(TENANT, features))
        await caught_up(lake, ends)
        stop = asyncio.Event()
        done: collections.Counter[str] = collections.Counter()

        async def read(r: int) -> None:
            i = r * 1_000_000
            while not stop.is_set():
                i += 1
                try:
                    await lake.coordinate(nearest(i))
                except LakeError as exc:
                    done[type(exc).__name__] += 1
                else:
                    done["ok"] += 1
                await asyncio.sleep(0)

        readers = [asyncio.create_task(read(r)) for r in range(4)]
        replica = replicas(lake).replicas[0]
        try:
            await eventually(lambda: done["ok"] >= 50, within=20.0)
            await asyncio.to_thread(ends.standby.kill)
            await eventually(lambda: replica.state == "down", within=20.0)
            health = (await lake.health()).component("postgres.replica.1")
            assert health.status is Status.DEGRADED
            served = done["ok"]
            await eventually(lambda: done["ok"] >= served + 50, within=20.0)
            await asyncio.to_thread(ends.standby.start)
            await eventually(lambda: replica.in_rotation, within=30.0)
            on_replica = replica.reads
            await eventually(lambda: replica.reads > on_replica + 20, within=20.0)
        finally:
            stop.set()
            await asyncio.gather(*readers)
        print(
            f"\nkilled replica: {done['ok']} reads, {replica.fallbacks} fell back to"
            f" the primary, routed {replicas(lake).routed}"
        )
        assert set(done) == {"ok"}
