"""
The lake.v1 services: each RPC builds a typed operation and hands it to the manager.

Every handler runs inside ``_serve``, which supplies the caller's tenant (from the
auth interceptor) and maps any failure through ``lake.api.errors.status_of``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lake.api import convert
from lake.api.auth import current_tenant
from lake.api.errors import status_of
from lake.api.fields import request_field
from lake.errors import ValidationError
from lake.manager import ServiceManager
from lake.models import Collection, Limits, Point, TextItem, VectorItem
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
)
from lake.v1 import lake_pb2, lake_pb2_grpc

__all__ = ["SpatialServicer", "TimeSeriesServicer", "VectorsServicer"]

R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Any, Context, str], Awaitable[R]]


def _serve(handler: Handler[R]) -> Callable[[Any, Any, Context], Awaitable[R]]:
    method = handler.__qualname__

    @functools.wraps(handler)
    async def rpc(self: Any, request: Any, context: Context) -> R:
        try:
            return await handler(self, request, context, current_tenant())
        except Exception as exc:
            failure = (
                request_field(method, exc) if isinstance(exc, ValidationError) else exc
            )
            code, message = status_of(failure, method)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return rpc


def _default(value: int, default: int) -> int:
    return value or default


def _at_most(count: int, where: str, cap: int, unit: str = "items") -> None:
    # Counted on the wire message, before a single entry becomes a Python object.
    if count > cap:
        raise ValidationError(where, f"more than {cap} {unit}")


class VectorsServicer(lake_pb2_grpc.VectorsServicer):
    """
    lake.v1.Vectors.
    """

    def __init__(self, manager: ServiceManager) -> None:
        self._manager = manager

    @_serve
    async def CreateCollection(
        self, request: lake_pb2.CreateCollectionRequest, context: Context, tenant: str
    ) -> lake_pb2.CreateCollectionResponse:
        metric = convert.METRICS.get(request.metric)
        if metric is None:
            raise ValidationError("metric", "must be COSINE, L2 or INNER_PRODUCT")
        made = await self._manager.coordinate(
            CreateCollection(
                tenant, Collection(request.collection, request.dim, metric)
            )
        )
        return lake_pb2.CreateCollectionResponse(
            collection=made.name, dim=made.dim, metric=convert.METRIC_ENUM[made.metric]
        )

    @_serve
    async def Upsert(
        self, request: lake_pb2.UpsertVectorsRequest, context: Context, tenant: str
    ) -> lake_pb2.UpsertVectorsResponse:
        _at_most(len(request.items), "items", self._manager.limits.max_batch)
        items = [
            VectorItem(it.id, list(it.values), convert.from_struct(it.metadata))
            for it in request.items
        ]
        n = await self._manager.coordinate(
            UpsertVectors(tenant, request.collection, items)
        )
        return lake_pb2.UpsertVectorsResponse(upserted=n)

    @_serve
    async def Search(
        self, request: lake_pb2.SearchVectorsRequest, context: Context, tenant: str
    ) -> lake_pb2.SearchVectorsResponse:
        dims = self._manager.limits.max_vector_dim
        _at_most(len(request.vector), "vector", dims, "dimensions")
        found = await self._manager.coordinate(
            SearchVectors(
                tenant,
                request.collection,
                list(request.vector),
                k=_default(request.k, 10),
                where=convert.from_struct(request.where),
                ef_search=request.ef_search or None,
            )
        )
        return convert.matches_out(found)

    @_serve
    async def Delete(
        self, request: lake_pb2.DeleteVectorsRequest, context: Context, tenant: str
    ) -> lake_pb2.DeleteVectorsResponse:
        _at_most(len(request.ids), "ids", self._manager.limits.max_batch)
        n = await self._manager.coordinate(
            DeleteVectors(tenant, request.collection, list(request.ids))
        )
        return lake_pb2.DeleteVectorsResponse(deleted=n)

    @_serve
    async def UpsertTexts(
        self, request: lake_pb2.UpsertTextsRequest, context: Context, tenant: str
    ) -> lake_pb2.UpsertVectorsResponse:
        _at_most(len(request.items), "items", self._manager.limits.max_batch)
        items = [
            TextItem(it.id, it.text, convert.from_struct(it.metadata))
            for it in request.items
        ]
        n = await self._manager.coordinate(
            UpsertTexts(tenant, request.collection, items)
        )
        return lake_pb2.UpsertVectorsResponse(upserted=n)

    @_serve
    async def SearchText(
        self, request: lake_pb2.SearchTextRequest, context: Context, tenant: str
    ) -> lake_pb2.SearchVectorsResponse:
        found = await self._manager.coordinate(
            SearchText(
                tenant,
                request.collection,
                request.text,
                k=_default(request.k, 10),
                where=convert.from_struct(request.where),
            )
        )
        return convert.matches_out(found)


def _points(request: lake_pb2.WritePointsRequest, limits: Limits) -> list[Point]:
    _at_most(len(request.timestamps_us), "timestamps_us", limits.max_batch)
    if len(request.timestamps_us) != len(request.values):
        raise ValidationError("values", "must be as many as timestamps_us")
    stamps = convert.us_to_datetimes(request.timestamps_us, "timestamps_us")
    return [Point(ts, v) for ts, v in zip(stamps, request.values, strict=True)]


class TimeSeriesServicer(lake_pb2_grpc.TimeSeriesServicer):
    """
    lake.v1.TimeSeries.
    """

    def __init__(self, manager: ServiceManager) -> None:
        self._manager = manager

    async def _write(self, tenant: str, request: lake_pb2.WritePointsRequest) -> int:
        points = _points(request, self._manager.limits)
        op = WritePoints(tenant, request.metric, points, dict(request.tags))
        return await self._manager.coordinate(op)

    @_serve
    async def Write(
        self, request: lake_pb2.WritePointsRequest, context: Context, tenant: str
    ) -> lake_pb2.WritePointsResponse:
        return lake_pb2.WritePointsResponse(written=await self._write(tenant, request))

    @_serve
    async def WriteStream(
        self,
        requests: AsyncIterator[lake_pb2.WritePointsRequest],
        context: Context,
        tenant: str,
    ) -> lake_pb2.WritePointsResponse:
        written = 0
        async for request in requests:
            written += await self._write(tenant, request)
        return lake_pb2.WritePointsResponse(written=written)

    @_serve
    async def Query(
        self, request: lake_pb2.QueryPointsRequest, context: Context, tenant: str
    ) -> lake_pb2.QueryPointsResponse:
        page = await self._manager.coordinate(
            QueryPoints(
                tenant,
                request.metric,
                convert.required_time(request, "start"),
                convert.required_time(request, "end"),
                dict(request.tags),
                limit=_default(request.limit, 1000),
                cursor=request.cursor or None,
            )
        )
        return convert.page_out(page)

    @_serve
    async def Aggregate(
        self, request: lake_pb2.AggregatePointsRequest, context: Context, tenant: str
    ) -> lake_pb2.AggregatePointsResponse:
        fn = convert.AGGREGATES.get(request.aggregate)
        if fn is None:
            raise ValidationError("aggregate", "must name a function (AVG, MIN, ...)")
        buckets = await self._manager.coordinate(
            AggregatePoints(
                tenant,
                request.metric,
                convert.required_time(request, "start"),
                convert.required_time(request, "end"),
                convert.required_duration(request, "bucket"),
                fn,
                dict(request.tags),
            )
        )
        return convert.buckets_out(buckets)


class SpatialServicer(lake_pb2_grpc.SpatialServicer):
    """
    lake.v1.Spatial.
    """

    def __init__(self, manager: ServiceManager) -> None:
        self._manager = manager

    @_serve
    async def Upsert(
        self, request: lake_pb2.UpsertFeaturesRequest, context: Context, tenant: str
    ) -> lake_pb2.UpsertFeaturesResponse:
        _at_most(len(request.features), "features", self._manager.limits.max_batch)
        features = [convert.feature_in(f) for f in request.features]
        n = await self._manager.coordinate(UpsertFeatures(tenant, features))
        return lake_pb2.UpsertFeaturesResponse(upserted=n)

    @_serve
    async def Nearby(
        self, request: lake_pb2.NearbyRequest, context: Context, tenant: str
    ) -> lake_pb2.FeaturesResponse:
        found = await self._manager.coordinate(
            FeaturesNearby(
                tenant,
                request.lon,
                request.lat,
                request.radius_m,
                limit=_default(request.limit, 100),
            )
        )
        return convert.features_out(found)

    @_serve
    async def Nearest(
        self, request: lake_pb2.NearestRequest, context: Context, tenant: str
    ) -> lake_pb2.FeaturesResponse:
        found = await self._manager.coordinate(
            FeaturesNearest(tenant, request.lon, request.lat, k=_default(request.k, 10))
        )
        return convert.features_out(found)

    @_serve
    async def InBox(
        self, request: lake_pb2.InBoxRequest, context: Context, tenant: str
    ) -> lake_pb2.FeaturesResponse:
        found = await self._manager.coordinate(
            FeaturesInBox(
                tenant,
                request.west,
                request.south,
                request.east,
                request.north,
                limit=_default(request.limit, 1000),
            )
        )
        return convert.features_out(found)

    @_serve
    async def InPolygon(
        self, request: lake_pb2.InPolygonRequest, context: Context, tenant: str
    ) -> lake_pb2.FeaturesResponse:
        cap = self._manager.limits.max_polygon_vertices
        _at_most(len(request.lons), "lons", cap, "vertices")
        if len(request.lons) != len(request.lats):
            raise ValidationError("lats", "must be as many as lons")
        ring = list(zip(request.lons, request.lats, strict=True))
        found = await self._manager.coordinate(
            FeaturesInPolygon(tenant, ring, limit=_default(request.limit, 1000))
        )
        return convert.features_out(found)
