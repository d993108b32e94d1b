"""
A table loaded in bulk gets planner statistics at once, so its indexes are used.
"""

from __future__ import annotations

import random

import asyncpg

from lake.operations import Feature, FeaturesNearest, UpsertFeatures
from tests.waiting import eventually

NEAREST_PLAN = (
    "EXPLAIN SELECT id FROM features WHERE tenant_id = 't1'"
    " ORDER BY ll_to_earth(lat, lon) <-> ll_to_earth(50.0, 10.0) LIMIT 10"
)


async def test_bulk_loaded_features_are_analyzed_and_use_their_index(
    manager, database, servers
):
    """After 5,000 features the table is analyzed, and nearest-k uses the index
    (on a fresh table without statistics it sorted every row)."""
    rng = random.Random(1)
    features = [
        Feature(f"f{i}", rng.uniform(-10, 30), rng.uniform(35, 60)) for i in range(5000)
    ]
    await manager.coordinate(UpsertFeatures("t1", features))
    conn = await asyncpg.connect(database, password=servers["postgres"].password)
    try:

        async def analyzed() -> bool:
            count = await conn.fetchval(
                "SELECT analyze_count FROM pg_stat_user_tables"
                " WHERE relname = 'features'"
            )
            assert count in (0, 1), count  # once, never per batch
            return bool(count)

        plan = ""

        async def indexed() -> bool:
            nonlocal plan
            plan = "\n".join(r[0] for r in await conn.fetch(NEAREST_PLAN))
            return "features_earth_idx" in plan

        # The ANALYZE runs in the background: wait for it, then for its
        # statistics (its count can show before its transaction commits).
        await eventually(analyzed, every=0.02)
        try:
            await eventually(indexed, within=5.0, every=0.02)
        except AssertionError:
            raise AssertionError(plan) from None
        assert await analyzed()  # still once
    finally:
        await conn.close()
    found = await manager.coordinate(FeaturesNearest("t1", 10.0, 50.0, k=10))
    assert len(found) == 10
