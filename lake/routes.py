"""
The routing table: which component call serves each operation type.

Reads name the cache scope they read from and the codec of their result, so the
manager can serve them through the read cache (and, with read replicas, on a
replica that has replayed the scope's writes); SearchText names its scope but no
codec: routed like the others, never cached. Writes and UpsertTexts go straight
to their components.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lake.codec import BUCKETS, FEATURE_MATCHES, POINT_PAGE, VECTOR_MATCHES, Codec
from lake.models import (
    SPATIAL_SCOPE,
    VectorItem,
    VectorMatch,
    series_scope,
    vector_scope,
)
from lake.operations import (
    AggregatePoints,
    CreateCollection,
    DeleteVectors,
    FeaturesInBox,
    FeaturesInPolygon,
    FeaturesNearby,
    FeaturesNearest,
    QueryPoints,
    SearchText,
    SearchVectors,
    UpsertFeatures,
    UpsertTexts,
    UpsertVectors,
    WritePoints,
    WritePointsMany,
)
from lake.ports import Components

__all__ = ["ROUTES", "Route"]


@dataclass(frozen=True, slots=True)
class Route:
    """
    How one operation type is served: its handler and, for reads, the scope it
    reads from and (for cached reads) the codec of its result.
    """

    handler: Callable[[Components, Any], Awaitable[object]]
    scope: Callable[[Any], str] | None = None
    codec: Codec[Any] | None = None


async def _upsert_texts(c: Components, op: UpsertTexts) -> int:
    vectors = await c.mesh.embed([item.text for item in op.items])
    items = [
        VectorItem(item.id, vector, {**item.metadata, "text": item.text})
        for item, vector in zip(op.items, vectors, strict=True)
    ]
    return await c.vectors.upsert(op.tenant, op.collection, items)


async def _search_text(c: Components, op: SearchText) -> list[VectorMatch]:
    (vector,) = await c.mesh.embed([op.text])
    return await c.vectors.search(
        op.tenant, op.collection, vector, op.k, where=op.where
    )


def _vectors(op: Any) -> str:
    return vector_scope(op.collection)


def _series(op: Any) -> str:
    return series_scope(op.metric)


def _spatial(_: Any) -> str:
    return SPATIAL_SCOPE


# The routing table: operation type -> component call.
ROUTES: dict[type[Any], Route] = {
    CreateCollection: Route(
        lambda c, op: c.vectors.create_collection(op.tenant, op.collection)
    ),
    UpsertVectors: Route(
        lambda c, op: c.vectors.upsert(op.tenant, op.collection, list(op.items))
    ),
    SearchVectors: Route(
        lambda c, op: c.vectors.search(
            op.tenant,
            op.collection,
            [float(x) for x in op.vector],
            op.k,
            where=op.where,
            ef_search=op.ef_search,
        ),
        _vectors,
        VECTOR_MATCHES,
    ),
    UpsertTexts: Route(lambda c, op: _upsert_texts(c, op)),
    # A read (of its collection's scope, so a replica may serve it) that is never
    # cached: its answer hangs on the cortex peer's embedding.
    SearchText: Route(lambda c, op: _search_text(c, op), _vectors),
    DeleteVectors: Route(
        lambda c, op: c.vectors.delete(op.tenant, op.collection, list(op.ids))
    ),
    WritePoints: Route(
        lambda c, op: c.series.write(op.tenant, op.metric, op.tags, list(op.points))
    ),
    WritePointsMany: Route(
        lambda c, op: c.series.write_many(
            op.tenant, [(w.metric, w.tags, list(w.points)) for w in op.writes]
        )
    ),
    QueryPoints: Route(
        lambda c, op: c.series.query(
            op.tenant, op.metric, op.tags, op.start, op.end, op.limit, op.cursor
        ),
        _series,
        POINT_PAGE,
    ),
    AggregatePoints: Route(
        lambda c, op: c.series.aggregate(
            op.tenant, op.metric, op.tags, op.start, op.end, op.bucket, op.fn
        ),
        _series,
        BUCKETS,
    ),
    UpsertFeatures: Route(lambda c, op: c.spatial.upsert(op.tenant, list(op.features))),
    FeaturesNearby: Route(
        lambda c, op: c.spatial.nearby(
            op.tenant, float(op.lon), float(op.lat), float(op.radius_m), op.limit
        ),
        _spatial,
        FEATURE_MATCHES,
    ),
    FeaturesNearest: Route(
        lambda c, op: c.spatial.nearest(op.tenant, float(op.lon), float(op.lat), op.k),
        _spatial,
        FEATURE_MATCHES,
    ),
    FeaturesInBox: Route(
        lambda c, op: c.spatial.in_box(
            op.tenant, op.west, op.south, op.east, op.north, op.limit
        ),
        _spatial,
        FEATURE_MATCHES,
    ),
    FeaturesInPolygon: Route(
        lambda c, op: c.spatial.in_polygon(op.tenant, list(op.ring), op.limit),
        _spatial,
        FEATURE_MATCHES,
    ),
}
