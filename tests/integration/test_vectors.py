"""
The vector store on real PostgreSQL + pgvector, through the manager.
"""

from __future__ import annotations

import random

import asyncpg
import pytest

from lake.errors import ConflictError, NotFoundError, ValidationError
from lake.operations import (
    Collection,
    CreateCollection,
    DeleteVectors,
    SearchVectors,
    UpsertVectors,
    VectorItem,
)


async def create(manager, tenant="t1", name="docs", dim=3, metric="cosine"):
    return await manager.coordinate(
        CreateCollection(tenant, Collection(name, dim, metric))
    )


async def count_items(lake_settings) -> int:
    pg = lake_settings["postgres"]
    conn = await asyncpg.connect(pg["dsn"], password=pg["password"] or None)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM vector_items"))
    finally:
        await conn.close()


async def test_upsert_and_search_by_cosine_with_metadata(manager):
    """Search returns the nearest vectors by cosine distance, with metadata."""
    await create(manager)
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


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("l2", ["near", "far"]), ("ip", ["far", "near"]), ("cosine", ["far", "near"])],
)
async def test_each_metric_orders_by_its_own_distance(manager, metric, expected):
    """L2 ranks by length too, inner product by magnitude, cosine by angle only."""
    await create(manager, name=f"m_{metric}", dim=2, metric=metric)
    items = [VectorItem("near", [1.0, 0.1]), VectorItem("far", [10.0, 0.0])]
    await manager.coordinate(UpsertVectors("t1", f"m_{metric}", items))
    found = await manager.coordinate(
        SearchVectors("t1", f"m_{metric}", [1.0, 0.0], k=2)
    )
    assert [m.id for m in found] == expected


async def test_collections_of_different_dimensions_coexist(manager, container):
    """Two collections of other dimensions, each with its own HNSW index."""
    await create(manager, name="small", dim=2)
    await create(manager, name="large", dim=5, metric="l2")
    await manager.coordinate(UpsertVectors("t1", "small", [VectorItem("a", [1, 0])]))
    await manager.coordinate(UpsertVectors("t1", "large", [VectorItem("b", [1] * 5)]))
    small = await manager.coordinate(SearchVectors("t1", "small", [1, 0], k=5))
    large = await manager.coordinate(SearchVectors("t1", "large", [1] * 5, k=5))
    assert [m.id for m in small] == ["a"]
    assert [m.id for m in large] == ["b"]
    db = await container.database()
    async with db.transaction() as conn:
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'vector_items'"
            " AND indexdef LIKE '%hnsw%'"
        )
    defs = " ".join(r["indexdef"] for r in indexes)
    assert "vector(2)" in defs
    assert "vector(5)" in defs
    assert "vector_l2_ops" in defs


async def test_declaring_a_collection_again(manager):
    """The same declaration is a no-op; another shape under the name is a conflict."""
    await create(manager, dim=3)
    await create(manager, dim=3)
    with pytest.raises(ConflictError, match="another shape"):
        await create(manager, dim=4)


async def test_retried_batch_never_duplicates(manager, lake_settings):
    """The same batch upserted twice stores each id once, with the latest values."""
    await create(manager, dim=2)
    batch = [VectorItem(f"v{i}", [1.0, float(i)], {"i": i}) for i in range(500)]
    for _ in range(2):
        assert await manager.coordinate(UpsertVectors("t1", "docs", batch)) == 500
    assert await count_items(lake_settings) == 500
    changed = [VectorItem("v7", [0.0, 1.0], {"i": "new"})]
    await manager.coordinate(UpsertVectors("t1", "docs", changed))
    found = await manager.coordinate(SearchVectors("t1", "docs", [0.0, 1.0], k=1))
    assert [(m.id, m.metadata) for m in found] == [("v7", {"i": "new"})]
    assert await count_items(lake_settings) == 500


async def test_filtered_search_returns_k_when_k_match(manager):
    """A selective filter still yields k rows, thanks to iterative index scans."""
    await create(manager, dim=8)
    rng = random.Random(7)
    items = [
        VectorItem(
            f"v{i}",
            [rng.gauss(0, 1) for _ in range(8)],
            {"kind": "rare" if i % 50 == 0 else "common"},
        )
        for i in range(3000)
    ]
    for start in range(0, len(items), 1000):
        await manager.coordinate(
            UpsertVectors("t1", "docs", items[start : start + 1000])
        )
    query = [rng.gauss(0, 1) for _ in range(8)]
    found = await manager.coordinate(
        SearchVectors("t1", "docs", query, k=20, where={"kind": "rare"}, ef_search=20)
    )
    assert len(found) == 20  # 60 rare items exist among 3000
    assert all(m.metadata["kind"] == "rare" for m in found)
    assert [m.distance for m in found] == sorted(m.distance for m in found)


async def test_delete_by_ids(manager):
    """Deleted ids stop appearing; the count says how many existed."""
    await create(manager, dim=2)
    items = [VectorItem(str(i), [1.0, float(i)]) for i in range(5)]
    await manager.coordinate(UpsertVectors("t1", "docs", items))
    assert (
        await manager.coordinate(DeleteVectors("t1", "docs", ["1", "3", "nope"])) == 2
    )
    found = await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0], k=10))
    assert sorted(m.id for m in found) == ["0", "2", "4"]


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([VectorItem("a", [1.0, 2.0])], "items[0].vector"),  # 2 dims; collection: 3
        (
            [VectorItem("a", [1.0, 2.0, 3.0]), VectorItem("b", [1.0, float("nan"), 0])],
            "items[1].vector",
        ),
        ([VectorItem("a", [1.0, float("inf"), 0.0])], "items[0].vector"),
        ([VectorItem("a", [])], "items[0].vector"),
        ([], "items"),
    ],
)
async def test_bad_vectors_name_the_field_and_write_nothing(
    manager, lake_settings, items, field
):
    """Dimension mismatch, NaN, infinity, empty: refused whole, nothing written."""
    await create(manager, dim=3)
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(UpsertVectors("t1", "docs", items))
    assert info.value.field == field
    assert await count_items(lake_settings) == 0


async def test_bad_searches_name_the_field(manager):
    """Wrong dimension, k out of range and unknown collections are refused."""
    await create(manager, dim=3)
    with pytest.raises(ValidationError, match="vector: has 2 dimensions"):
        await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0]))
    with pytest.raises(ValidationError, match=r"^k: "):
        await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0, 0.0], k=0))
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        await manager.coordinate(SearchVectors("t1", "nope", [1.0, 0.0, 0.0]))
    with pytest.raises(NotFoundError):  # another tenant's collection is not yours
        await manager.coordinate(SearchVectors("t2", "docs", [1.0, 0.0, 0.0]))
