"""
Batch writes lock their rows in one order: two writes naming the same rows in
opposite orders, at once, queue on each other instead of deadlocking.

Straight to the stores, so no retry hides a failure. Locked in request order,
PostgreSQL finds the deadlock after its deadlock_timeout (a second, with the pool
connections held all along) and fails one write of each pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from lake.models import Collection, Feature, Point, VectorItem
from lake.stores.spatial import PgSpatialStore
from lake.stores.timeseries import PgTimeSeriesStore
from lake.stores.vector import PgVectorStore

KEYS = [f"k{i}" for i in range(6)]
WRITERS = 8
YESTERDAY = datetime.now(UTC) - timedelta(days=1)

Write = Callable[[int, list[str]], Awaitable[int]]


async def series_write(container) -> Write:
    series: PgTimeSeriesStore = await container.series()

    async def write(k: int, keys: list[str]) -> int:
        stamp = YESTERDAY + timedelta(seconds=k)
        return await series.write_many(
            "t1", [(key, {}, [Point(stamp, float(k))]) for key in keys]
        )

    return write


async def vector_write(container) -> Write:
    vectors: PgVectorStore = await container.vectors()
    await vectors.create_collection("t1", Collection("docs", 3, "l2"))

    async def write(k: int, keys: list[str]) -> int:
        items = [VectorItem(key, [float(k), 1.0, 2.0]) for key in keys]
        return await vectors.upsert("t1", "docs", items)

    return write


async def feature_write(container) -> Write:
    spatial: PgSpatialStore = await container.spatial()

    async def write(k: int, keys: list[str]) -> int:
        return await spatial.upsert("t1", [Feature(key, k, 45.0) for key in keys])

    return write


@pytest.mark.parametrize("writer", [series_write, vector_write, feature_write])
async def test_writes_of_the_same_rows_in_any_order_never_deadlock(
    manager, container, writer
):
    """Eight writers at once, half naming the rows forwards and half backwards,
    three rounds: every write succeeds whole."""
    write = await writer(container)
    for _ in range(3):
        stored = await asyncio.gather(
            *(write(k, KEYS if k % 2 else KEYS[::-1]) for k in range(WRITERS))
        )
        assert stored == [len(KEYS)] * WRITERS
