"""
Tenant isolation in depth: the tenant filter, row-level security, and the pool.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from lake.container import aresolve, create_container
from lake.errors import StoreError
from lake.operations import (
    Collection,
    CreateCollection,
    Feature,
    FeaturesNearby,
    Point,
    QueryPoints,
    SearchVectors,
    UpsertFeatures,
    UpsertVectors,
    VectorItem,
    WritePoints,
)

T0 = datetime.now(UTC) - timedelta(hours=2)
PARIS = (2.3522, 48.8566)
TENANTS = [f"tenant-{i}" for i in range(5)]


async def seed(manager, tenant: str, marker: float) -> None:
    await manager.coordinate(CreateCollection(tenant, Collection("docs", 2)))
    await manager.coordinate(
        UpsertVectors(
            tenant, "docs", [VectorItem("same", [marker, 1.0], {"t": tenant})]
        )
    )
    await manager.coordinate(WritePoints(tenant, "m", [Point(T0, marker)]))
    await manager.coordinate(
        UpsertFeatures(tenant, [Feature("same", *PARIS, {"t": tenant})])
    )


async def test_tenant_a_never_reads_tenant_b(manager):
    """Same ids and names in two tenants stay apart in every store."""
    await seed(manager, "tenant-a", 1.0)
    await seed(manager, "tenant-b", 2.0)
    await manager.coordinate(
        UpsertVectors("tenant-b", "docs", [VectorItem("only-b", [1.0, 1.0])])
    )
    vec = await manager.coordinate(SearchVectors("tenant-a", "docs", [1.0, 1.0], k=10))
    assert [(m.id, m.metadata["t"]) for m in vec] == [("same", "tenant-a")]
    pts = await manager.coordinate(QueryPoints("tenant-a", "m", T0, T0 + timedelta(1)))
    assert [p.value for p in pts.points] == [1.0]
    feats = await manager.coordinate(FeaturesNearby("tenant-a", *PARIS, radius_m=10.0))
    assert [m.feature.properties["t"] for m in feats] == ["tenant-a"]


async def test_queries_run_as_a_role_that_is_neither_owner_nor_superuser(
    container, manager
):
    """Tenant transactions run as lake_app: not superuser, not the tables' owner."""
    db = await container.database()
    async with db.transaction("tenant-a") as conn:
        row = await conn.fetchrow(
            "SELECT current_user AS who, r.rolsuper, r.rolbypassrls,"
            " (SELECT tableowner FROM pg_tables WHERE tablename = 'features') AS owner"
            " FROM pg_roles r WHERE r.rolname = current_user"
        )
    assert row["who"] == "lake_app"
    assert row["rolsuper"] is False
    assert row["rolbypassrls"] is False
    assert row["owner"] != "lake_app"


async def test_row_level_security_holds_without_the_tenant_filter(container, manager):
    """Even SQL that forgets the tenant filter sees only the transaction's tenant."""
    await seed(manager, "tenant-a", 1.0)
    await seed(manager, "tenant-b", 2.0)
    db = await container.database()
    async with db.transaction("tenant-a") as conn:
        tables = [
            "features",
            "ts_data",
            "ts_series",
            "vector_items",
            "vector_collections",
        ]
        for table in tables:
            owners = await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")  # noqa: S608
            assert [r["tenant_id"] for r in owners] == ["tenant-a"], table
    with pytest.raises(StoreError):  # the policy's WITH CHECK refuses it
        async with db.transaction("tenant-a") as conn:
            await conn.execute(
                "INSERT INTO features (tenant_id, id, lon, lat)"
                " VALUES ('tenant-b', 'planted', 0, 0)"
            )
    async with db.transaction() as conn:  # as the owner: nothing was planted
        assert (
            await conn.fetchval("SELECT count(*) FROM features WHERE id = 'planted'")
            == 0
        )


async def test_no_tenant_set_means_no_rows(container, manager):
    """As lake_app with no tenant in the transaction, every table reads empty."""
    await seed(manager, "tenant-a", 1.0)
    db = await container.database()
    async with db.transaction() as conn:
        await conn.execute("SET LOCAL ROLE lake_app")
        assert await conn.fetchval("SELECT count(*) FROM features") == 0
        assert await conn.fetchval("SELECT count(*) FROM vector_items") == 0


async def test_fifty_mixed_tenant_tasks_on_two_connections(lake_settings):
    """50 concurrent tasks of 5 tenants on a pool of 2, some cancelled mid-query,
    never see another tenant's rows; afterwards the pool serves correctly."""
    lake_settings["postgres"].update(min_size=1, max_size=2, acquire_timeout=30.0)
    manager = await aresolve(create_container(lake_settings).manager)
    await manager.start()
    try:
        for i, tenant in enumerate(TENANTS):
            await seed(manager, tenant, float(i))
        rng = random.Random(11)
        leaks: list[str] = []

        async def one(n: int) -> None:
            tenant = TENANTS[n % len(TENANTS)]
            kind = n % 3
            if kind == 0:
                found = await manager.coordinate(
                    SearchVectors(tenant, "docs", [1.0, 1.0], k=10, ef_search=10 + n)
                )
                seen = {m.metadata["t"] for m in found}
            elif kind == 1:
                page = await manager.coordinate(
                    QueryPoints(tenant, "m", T0, T0 + timedelta(hours=1), limit=1 + n)
                )
                seen = {TENANTS[int(p.value)] for p in page.points}
            else:
                near = await manager.coordinate(
                    FeaturesNearby(tenant, *PARIS, radius_m=100.0 + n)
                )
                seen = {m.feature.properties["t"] for m in near}
            leaks.extend(f"{tenant} saw {s}" for s in seen if s != tenant)
            if not seen:
                leaks.append(f"{tenant} saw nothing")

        tasks = [asyncio.create_task(one(n)) for n in range(50)]
        await asyncio.sleep(0)
        cancelled = 0
        for task in rng.sample(tasks, 12):
            await asyncio.sleep(rng.uniform(0, 0.004))
            cancelled += task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [
            r
            for r in results
            if isinstance(r, BaseException)
            and not isinstance(r, asyncio.CancelledError)
        ]
        assert failures == []
        assert cancelled > 0
        # The next 100 operations after the cancellations are all correct.
        for n in range(100):
            await one(n)
        assert leaks == []
    finally:
        await manager.stop()
