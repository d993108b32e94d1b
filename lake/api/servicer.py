"""
The lake.v1 services: each RPC builds a typed operation and hands it to the manager.

Every handler runs inside ``_serve``, which supplies the caller's tenant (from the
auth interceptor) and maps any failure through ``lake.api.errors.status_of``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lake import deadline
from lake.api import convert
from lake.api.auth import current_tenant
from lake.api.errors import pushback, status_of
from lake.api.fields import request_field
from lake.api.quota_status import quota_status
from lake.api.rendered import Rendered
from lake.errors import DeadlineExceededError, QuotaExceededError, ValidationError
from lake.manager import ServiceManager
from lake.models import Collection, Limits, Point, TextItem, VectorItem
from lake.offload import run_heavy
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
        except QuotaExceededError as exc:
            # RESOURCE_EXHAUSTED with QuotaFailure, RetryInfo and retry-after-ms.
            # (abort_with_status, spelled out: the aio stubs lack it)
            status = quota_status(exc)
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise  # unreachable: abort raises
        except Exception as exc:
            failure = (
                request_field(method, exc) if isinstance(exc, ValidationError) else exc
            )
            code, message = status_of(failure, method)
            await context.abort(code, message, trailing_metadata=pushback(failure))
            raise  # unreachable: abort raises

    return rpc


# Converting a feature (a Struct of properties) costs about 20 values' worth.
FEATURE_WEIGHT = 20


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
        self._rendered = Rendered()  # wire messages of cached answers, built once

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

        def convert_items() -> list[VectorItem]:
            return [
                VectorItem(it.id, list(it.values), convert.from_struct(it.metadata))
                for it in request.items
            ]

        weight = sum(len(it.values) for it in request.items)
        items = await run_heavy(convert_items, weight)
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
        return self._rendered(found, convert.matches_out)

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
        return self._rendered(found, convert.matches_out)


def _points(request: lake_pb2.WritePointsRequest, limits: Limits) -> list[Point]:
    _at_most(len(request.timestamps_us), "timestamps_us", limits.max_batch)
    if len(request.timestamps_us) != len(request.values):
        raise ValidationError("values", "must be as many as timestamps_us")
    stamps = convert.us_to_datetimes(request.timestamps_us, "timestamps_us")
    return [Point(ts, v) for ts, v in zip(stamps, request.values, strict=True)]


def _message_field(field: str, messages: int) -> str:
    # WritePointsMany names writes[i]; a stream's client knows them as messages.
    if field.startswith("writes["):
        return field.replace("writes[", "messages[", 1)
    if messages == 1 and not field.startswith("messages"):
        return f"messages[0].{field}"
    return field


class TimeSeriesServicer(lake_pb2_grpc.TimeSeriesServicer):
    """
    lake.v1.TimeSeries.

    Args:
        manager: serves the operations.
        stream_idle_timeout: seconds a WriteStream may send nothing before it is
            ended (nothing stored).
    """

    def __init__(
        self, manager: ServiceManager, *, stream_idle_timeout: float = 10.0
    ) -> None:
        self._manager = manager
        self._rendered = Rendered()  # wire messages of cached answers, built once
        self._idle = stream_idle_timeout

    def _op(self, tenant: str, request: lake_pb2.WritePointsRequest) -> WritePoints:
        # Counts are checked before converting (in _points): a 250,000-point message
        # is refused in microseconds instead of blocking the loop.
        points = _points(request, self._manager.limits)
        return WritePoints(tenant, request.metric, points, dict(request.tags))

    @_serve
    async def Write(
        self, request: lake_pb2.WritePointsRequest, context: Context, tenant: str
    ) -> lake_pb2.WritePointsResponse:
        op = self._op(tenant, request)
        stored = await self._manager.coordinate(op)
        return lake_pb2.WritePointsResponse(
            written=stored, duplicates=len(op.points) - stored
        )

    @_serve
    async def WriteStream(
        self,
        requests: AsyncIterator[lake_pb2.WritePointsRequest],
        context: Context,
        tenant: str,
    ) -> lake_pb2.WritePointsResponse:
        # The whole stream is one transaction: a stream that fails half-way (a bad
        # message, a broken connection, a deadline) stores nothing.
        writes = await self._collect(tenant, requests)
        if not writes:
            return lake_pb2.WritePointsResponse(written=0)
        try:
            stored = await self._manager.coordinate(WritePointsMany(tenant, writes))
        except ValidationError as exc:
            if exc.field.startswith("writes["):
                raise exc.renamed(
                    exc.field.replace("writes[", "messages[", 1)
                ) from None
            if len(writes) == 1 and not exc.field.startswith("messages"):
                raise exc.renamed(f"messages[0].{exc.field}") from None
            raise
        total = sum(len(w.points) for w in writes)
        return lake_pb2.WritePointsResponse(written=stored, duplicates=total - stored)

    async def _collect(
        self, tenant: str, requests: AsyncIterator[lake_pb2.WritePointsRequest]
    ) -> list[WritePoints]:
        """
        Read the stream to its end: every message within the idle timeout, all of
        them within the call's deadline and ``limits.max_stream_points``.
        """
        cap = self._manager.limits.max_stream_points
        writes: list[WritePoints] = []
        total = 0
        try:
            async with asyncio.timeout(deadline.remaining()):
                while True:
                    request = await self._next(requests)
                    if request is None:
                        return writes
                    total += len(request.timestamps_us)
                    if total > cap:
                        problem = f"more than {cap} points in one stream; split it"
                        raise ValidationError("messages", problem)
                    try:
                        writes.append(self._op(tenant, request))
                    except ValidationError as exc:
                        where = f"messages[{len(writes)}].{exc.field}"
                        raise exc.renamed(where) from None
        except TimeoutError:
            msg = "stream outlived its deadline; nothing was stored"
            raise DeadlineExceededError(msg) from None

    async def _next(
        self, requests: AsyncIterator[lake_pb2.WritePointsRequest]
    ) -> lake_pb2.WritePointsRequest | None:
        try:
            async with asyncio.timeout(self._idle):
                return await anext(requests, None)
        except TimeoutError:
            msg = f"stream sent nothing for {self._idle:g} s; nothing was stored"
            raise DeadlineExceededError(msg) from None

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
        return self._rendered(page, convert.page_out)

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
        return self._rendered(buckets, convert.buckets_out)


class SpatialServicer(lake_pb2_grpc.SpatialServicer):
    """
    lake.v1.Spatial.
    """

    def __init__(self, manager: ServiceManager) -> None:
        self._manager = manager
        self._rendered = Rendered()  # wire messages of cached answers, built once

    @_serve
    async def Upsert(
        self, request: lake_pb2.UpsertFeaturesRequest, context: Context, tenant: str
    ) -> lake_pb2.UpsertFeaturesResponse:
        _at_most(len(request.features), "features", self._manager.limits.max_batch)
        features = await run_heavy(
            lambda: [convert.feature_in(f) for f in request.features],
            len(request.features) * FEATURE_WEIGHT,
        )
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
        return self._rendered(found, convert.features_out)

    @_serve
    async def Nearest(
        self, request: lake_pb2.NearestRequest, context: Context, tenant: str
    ) -> lake_pb2.FeaturesResponse:
        found = await self._manager.coordinate(
            FeaturesNearest(tenant, request.lon, request.lat, k=_default(request.k, 10))
        )
        return self._rendered(found, convert.features_out)

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
        return self._rendered(found, convert.features_out)

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
        return self._rendered(found, convert.features_out)
