"""
The first-cut stores against real PostgreSQL, through the manager.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lake.errors import ConflictError, ValidationError
from lake.operations import (
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

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PARIS = (2.3522, 48.8566)
LONDON = (-0.1276, 51.5072)
VERSAILLES = (2.1301, 48.8049)


async def test_vectors_upsert_and_search_by_cosine(manager):
    """Search returns the nearest vectors by cosine distance, with metadata."""
    items = [
        VectorItem("east", [1.0, 0.0, 0.0], {"label": "e"}),
        VectorItem("north", [0.0, 1.0, 0.0], {"label": "n"}),
        VectorItem("up", [0.0, 0.0, 1.0]),
    ]
    assert await manager.coordinate(UpsertVectors("t1", "docs", items)) == 3
    found = await manager.coordinate(SearchVectors("t1", "docs", [0.9, 0.1, 0.0], k=2))
    assert [m.id for m in found] == ["east", "north"]
    assert found[0].metadata == {"label": "e"}
    assert 0.0 <= found[0].distance < found[1].distance


async def test_vector_upsert_is_idempotent_and_replaces(manager):
    """Writing the same ids twice keeps one row each, with the latest values."""
    await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0, 0.0])]))
    await manager.coordinate(
        UpsertVectors("t1", "docs", [VectorItem("a", [0.0, 1.0], {"v": 2})])
    )
    found = await manager.coordinate(SearchVectors("t1", "docs", [0.0, 1.0], k=10))
    assert [(m.id, m.metadata) for m in found] == [("a", {"v": 2})]
    assert found[0].distance == pytest.approx(0.0, abs=1e-6)


async def test_search_ignores_vectors_of_other_dimensions(manager):
    """Vectors of another dimension in the same collection are not compared."""
    await manager.coordinate(
        UpsertVectors("t1", "docs", [VectorItem("two", [1.0, 0.0])])
    )
    await manager.coordinate(
        UpsertVectors("t1", "docs", [VectorItem("three", [1.0, 0.0, 0.0])])
    )
    found = await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0, 0.0], k=5))
    assert [m.id for m in found] == ["three"]


async def test_points_write_and_range_query(manager):
    """A range query returns [start, end) oldest first; rewriting replaces values."""
    points = [Point(T0 + timedelta(minutes=i), float(i)) for i in range(10)]
    assert (
        await manager.coordinate(WritePoints("t1", "cpu.load", points, {"host": "a"}))
        == 10
    )
    await manager.coordinate(
        WritePoints(
            "t1", "cpu.load", [Point(T0 + timedelta(minutes=3), 33.0)], {"host": "a"}
        )
    )
    got = await manager.coordinate(
        QueryPoints(
            "t1",
            "cpu.load",
            T0 + timedelta(minutes=2),
            T0 + timedelta(minutes=5),
            {"host": "a"},
        )
    )
    assert [p.value for p in got] == [2.0, 33.0, 4.0]
    assert got[0].ts == T0 + timedelta(minutes=2)
    other_series = await manager.coordinate(
        QueryPoints("t1", "cpu.load", T0, T0 + timedelta(hours=1), {"host": "b"})
    )
    assert other_series == []


async def test_retried_point_batch_does_not_duplicate(manager):
    """The same batch written twice stores each point once."""
    points = [Point(T0 + timedelta(seconds=i), 1.0) for i in range(50)]
    for _ in range(2):
        await manager.coordinate(WritePoints("t1", "req", points))
    got = await manager.coordinate(
        QueryPoints("t1", "req", T0, T0 + timedelta(hours=1))
    )
    assert len(got) == 50


async def test_timestamps_in_other_zones_are_stored_as_the_same_instant(manager):
    """An aware timestamp in +02:00 is the same point as its UTC instant."""
    from datetime import timezone

    local = datetime(2026, 3, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    await manager.coordinate(WritePoints("t1", "temp", [Point(local, 1.0)]))
    await manager.coordinate(WritePoints("t1", "temp", [Point(T0, 2.0)]))
    got = await manager.coordinate(QueryPoints("t1", "temp", T0, T0 + timedelta(1)))
    assert [(p.ts, p.value) for p in got] == [(T0, 2.0)]


async def test_features_nearby_in_metres_nearest_first(manager):
    """Nearby finds features within the radius, ordered by true distance."""
    features = [
        Feature("paris", *PARIS, {"name": "Paris"}),
        Feature("versailles", *VERSAILLES),
        Feature("london", *LONDON),
    ]
    assert await manager.coordinate(UpsertFeatures("t1", features)) == 3
    near = await manager.coordinate(FeaturesNearby("t1", *PARIS, radius_m=50_000.0))
    assert [m.feature.id for m in near] == ["paris", "versailles"]
    assert near[0].distance_m == pytest.approx(0.0, abs=1.0)
    assert near[1].distance_m == pytest.approx(17_200, rel=0.05)
    assert near[0].feature.properties == {"name": "Paris"}
    far = await manager.coordinate(FeaturesNearby("t1", *PARIS, radius_m=400_000.0))
    assert [m.feature.id for m in far] == ["paris", "versailles", "london"]
    assert far[2].distance_m == pytest.approx(343_500, rel=0.02)


async def test_tenant_a_never_reads_tenant_b(manager):
    """Same ids and names in two tenants stay apart in every store."""
    for tenant, value in (("tenant-a", 1.0), ("tenant-b", 2.0)):
        await manager.coordinate(
            UpsertVectors(
                tenant, "docs", [VectorItem("same", [value, 1.0], {"t": tenant})]
            )
        )
        await manager.coordinate(WritePoints(tenant, "m", [Point(T0, value)]))
        await manager.coordinate(
            UpsertFeatures(tenant, [Feature("same", *PARIS, {"t": tenant})])
        )
    await manager.coordinate(
        UpsertVectors("tenant-b", "docs", [VectorItem("only-b", [1.0, 1.0])])
    )

    vec = await manager.coordinate(SearchVectors("tenant-a", "docs", [1.0, 1.0], k=10))
    assert [(m.id, m.metadata["t"]) for m in vec] == [("same", "tenant-a")]
    pts = await manager.coordinate(QueryPoints("tenant-a", "m", T0, T0 + timedelta(1)))
    assert [p.value for p in pts] == [1.0]
    feats = await manager.coordinate(FeaturesNearby("tenant-a", *PARIS, radius_m=10.0))
    assert [m.feature.properties["t"] for m in feats] == ["tenant-a"]
    nobody = await manager.coordinate(
        SearchVectors("tenant-c", "docs", [1.0, 1.0], k=10)
    )
    assert nobody == []


async def test_bad_input_writes_nothing(manager):
    """A batch with one bad item is refused whole, naming the field."""
    items = [VectorItem("ok", [1.0, 0.0]), VectorItem("bad", [1.0, float("inf")])]
    with pytest.raises(ValidationError, match=r"items\[1\]\.vector"):
        await manager.coordinate(UpsertVectors("t1", "docs", items))
    assert await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0], k=5)) == []


async def test_database_constraint_errors_carry_no_sql(manager, container):
    """A constraint violation surfaces as a Lake error without SQL or driver names."""
    db = await container.database()
    with pytest.raises(ConflictError) as info:
        async with db.transaction("t1") as conn:
            await conn.execute(
                "INSERT INTO features (tenant_id, id, lon, lat)"
                " VALUES ('t1', 'x', 0, 0),"
                " ('t1', 'x', 1, 1)"
            )
    text = str(info.value)
    assert "INSERT" not in text
    assert "asyncpg" not in text.lower()
    assert "features" not in text
