"""
Lake behind a real PgBouncer in transaction pooling mode (``postgres.pgbouncer``):
migrations, writes and cached reads through it, and tenants kept apart while
many client connections share two server connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from lake.container import aresolve, create_container
from lake.errors import StoreUnavailableError
from lake.manager import ServiceManager
from lake.operations import (
    Feature,
    FeaturesNearest,
    Point,
    QueryPoints,
    UpsertFeatures,
    WritePoints,
)
from lake.resources.embedded import Endpoint
from lake.resources.postgres import open_pg_pool
from lake.stores.migrate import load_migrations
from tests.pgbouncer import run_pgbouncer
from tests.servers import live_settings, with_database

T0 = datetime.now(UTC) - timedelta(hours=2)
HOUR = timedelta(hours=1)
SERVER_CONNECTIONS = 2


@pytest.fixture(scope="module")
def bouncer(servers, tmp_path_factory) -> Iterator[Endpoint]:
    """PgBouncer (pool_mode = transaction, 2 server connections per database) in
    front of the session's PostgreSQL."""
    folder = tmp_path_factory.mktemp("pgbouncer")
    with run_pgbouncer(
        servers["postgres"], folder, pool_size=SERVER_CONNECTIONS
    ) as endpoint:
        yield endpoint


def _database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def bounced_settings(servers, bouncer: Endpoint, database: str) -> dict[str, Any]:
    """Testing settings whose DSN names ``database`` through PgBouncer."""
    settings = live_settings(servers, with_database(bouncer.url, database))
    # More client connections than PgBouncer has server connections.
    settings["postgres"].update(pgbouncer=True, min_size=6, max_size=8)
    settings["postgres"]["acquire_timeout"] = 30.0
    return settings


async def started(settings: dict[str, Any]) -> ServiceManager:
    manager: ServiceManager = await aresolve(create_container(settings).manager)
    await manager.start()
    return manager


async def direct(servers, database: str) -> Any:
    """A connection straight to PostgreSQL (not through PgBouncer), as the owner."""
    pg = servers["postgres"]
    dsn = with_database(pg.url, _database_name(database))
    return await asyncpg.connect(dsn, password=pg.password or None)


async def test_migrations_writes_and_cached_reads_go_through_pgbouncer(
    servers, bouncer, database
):
    """A fresh database migrated through PgBouncer; a write, a read, a cached read
    and the read after the next write (cache versions through PgBouncer too)."""
    manager = await started(
        bounced_settings(servers, bouncer, _database_name(database))
    )
    try:
        await manager.coordinate(UpsertFeatures("t1", [Feature("a", 2.35, 48.85)]))
        near = FeaturesNearest("t1", 2.35, 48.85, k=5)
        assert [m.feature.id for m in await manager.coordinate(near)] == ["a"]
        assert [m.feature.id for m in await manager.coordinate(near)] == ["a"]
        await manager.coordinate(UpsertFeatures("t1", [Feature("b", 2.36, 48.85)]))
        assert sorted(m.feature.id for m in await manager.coordinate(near)) == [
            "a",
            "b",
        ]
        query = QueryPoints("t1", "cpu", T0, T0 + HOUR)
        await manager.coordinate(WritePoints("t1", "cpu", [Point(T0, 1.5)]))
        assert [p.value for p in (await manager.coordinate(query)).points] == [1.5]
        await manager.coordinate(WritePoints("t1", "cpu", [Point(T0, 2.5)]))
        assert [p.value for p in (await manager.coordinate(query)).points] == [2.5]
    finally:
        await manager.stop()
    conn = await direct(servers, database)
    try:
        rows = await conn.fetch("SELECT version FROM lake_migrations ORDER BY 1")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == [m.version for m in load_migrations()]


async def test_tenants_stay_apart_on_shared_server_connections(
    servers, bouncer, database
):
    """Eight tenants' writes and reads at once, 6-8 Lake connections on 2 server
    connections: each tenant reads only its own rows, and both server connections
    carry no tenant and no role afterwards."""
    name = _database_name(database)
    container = create_container(bounced_settings(servers, bouncer, name))
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    tenants = [f"tenant-{n}" for n in range(8)]
    leaks: list[str] = []

    async def one(round_no: int, tenant: str) -> None:
        mine = Feature(f"f{round_no}", 2.35, 48.85, {"t": tenant})
        await manager.coordinate(UpsertFeatures(tenant, [mine]))
        at = T0 + timedelta(seconds=round_no)
        await manager.coordinate(WritePoints(tenant, "m", [Point(at, 1.0)]))
        near = await manager.coordinate(FeaturesNearest(tenant, 2.35, 48.85, k=50))
        seen = {m.feature.properties["t"] for m in near}
        leaks.extend(f"{tenant} saw {s}" for s in seen - {tenant})
        if len(near) != round_no + 1:
            leaks.append(f"{tenant} found {len(near)} features")
        page = await manager.coordinate(QueryPoints(tenant, "m", T0, T0 + HOUR))
        if len(page.points) != round_no + 1:
            leaks.append(f"{tenant} read {len(page.points)} points")

    conn = await direct(servers, database)
    try:
        for round_no in range(5):
            await asyncio.gather(*(one(round_no, t) for t in tenants))
        lake_connections = (await aresolve(container.database)).metrics()["size"]
        backends = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await manager.stop()
        await conn.close()
    assert leaks == []
    assert lake_connections >= 6
    assert 1 <= backends <= SERVER_CONNECTIONS
    assert await _server_sessions(bouncer, name) == [("postgres", "")] * 2


async def _server_sessions(bouncer: Endpoint, name: str) -> list[tuple[str, str]]:
    """The role and tenant setting of each of PgBouncer's server connections: two
    clients inside a transaction at once hold one each."""
    dsn = with_database(bouncer.url, name)
    clients = [
        await asyncpg.connect(dsn, password=bouncer.password, statement_cache_size=0)
        for _ in range(SERVER_CONNECTIONS)
    ]
    try:
        for client in clients:
            await client.execute("BEGIN")
        found = []
        for client in clients:
            row = await client.fetchrow(
                "SELECT current_user AS who,"
                " coalesce(current_setting('app.tenant_id', true), '') AS tenant,"
                " pg_backend_pid() AS pid"
            )
            found.append((row["who"], row["tenant"], row["pid"]))
        for client in clients:
            await client.execute("ROLLBACK")
    finally:
        for client in clients:
            await client.close()
    assert len({pid for *_, pid in found}) == SERVER_CONNECTIONS
    return [(who, tenant) for who, tenant, _ in found]


async def test_without_the_setting_pgbouncer_refuses_the_connection(bouncer):
    """Without postgres.pgbouncer Lake sends its server-side backstops at connect,
    which PgBouncer refuses as unknown startup parameters; with it, Lake connects."""
    with pytest.raises(StoreUnavailableError):
        async with open_pg_pool(
            dsn=bouncer.url, password=bouncer.password, min_size=1, max_size=1
        ):
            pass
    async with open_pg_pool(
        dsn=bouncer.url,
        password=bouncer.password,
        min_size=1,
        max_size=1,
        pgbouncer=True,
    ) as pool:
        assert await pool.fetchval("SELECT $1::int", 7) == 7
