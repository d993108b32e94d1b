"""
``Client``: the blocking twin of ``LakeClient`` (same methods, same values, same
errors) on a synchronous grpc channel, for scripts and threads with no event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from lake.client import wire
from lake.client.aio import DEFAULT_TIMEOUT_S
from lake.client.channel import TLS, Target, credentials, options, target_of
from lake.client.errors import error_of
from lake.client.types import (
    HealthReport,
    NewToken,
    QuotaOverview,
    TenantQuotas,
    TokenInfo,
    UsageRow,
    Written,
)
from lake.client.wire import PointsBatch
from lake.models import (
    Bucket,
    Collection,
    Feature,
    FeatureMatch,
    Point,
    PointPage,
    TextItem,
    VectorItem,
    VectorMatch,
)
from lake.v1 import (
    health_pb2,
    health_pb2_grpc,
    lake_pb2,
    lake_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
    usage_pb2_grpc,
)

__all__ = ["Client"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
M = TypeVar("M", bound=Message)


def _serialized(message: Message) -> bytes:
    return message.SerializeToString()


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Client:
    """
    A blocking client of one Lake service (one or many instances).

    Args:
        target: ``host:port``; a list of IPv4 ``ip:port`` (round robin over them);
            or any grpc target such as ``dns:///lake.ns.svc:50051`` (round robin
            over what it resolves to).
        token: sent as ``authorization: Bearer`` on every call.
        tls: TLS pinned to a CA (and a client certificate for mTLS); None for
            plaintext.
        timeout: each call's deadline in seconds unless the call names one; it
            covers every retry of the call.
        channel_options: more grpc channel options (they win over Lake's).

    Use ``with Client(...) as lake:`` or call ``close()``.
    """

    def __init__(
        self,
        target: Target,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        address, spread = target_of(target)
        opts = options(tls, round_robin=spread, extra=channel_options)
        self.target = address
        self.timeout = timeout
        self._metadata = _metadata(token)
        self.channel: grpc.Channel = (
            grpc.insecure_channel(address, options=opts)
            if tls is None
            else grpc.secure_channel(address, credentials(tls), options=opts)
        )
        self._vectors = lake_pb2_grpc.VectorsStub(self.channel)
        self._series = lake_pb2_grpc.TimeSeriesStub(self.channel)
        self._spatial = lake_pb2_grpc.SpatialStub(self.channel)
        self._health = health_pb2_grpc.LakeHealthStub(self.channel)
        self._usage = usage_pb2_grpc.UsageStub(self.channel)
        self._tokens = tokens_pb2_grpc.TokensStub(self.channel)
        self._quotas = quotas_pb2_grpc.QuotasStub(self.channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """
        Close the channel (calls in flight are cancelled).
        """
        self.channel.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise error_of(exc) from exc

    def invoke(
        self,
        path: str,
        request: Message,
        reply_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """
        Any unary method by its path (``/lake.v1.Vectors/Search``), with protobuf
        messages in and out; the token, deadline, retries and errors as for the
        typed methods.
        """
        method = self.channel.unary_unary(
            path,
            request_serializer=_serialized,
            response_deserializer=reply_type.FromString,
        )
        reply: M = self._call(method, request, timeout)
        return reply

    # --- vectors ---------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: int,
        metric: str = "cosine",
        *,
        timeout: float | None = None,
    ) -> Collection:
        """
        Create a vector collection (``cosine``, ``l2`` or ``ip``); the same again
        is fine, another shape under the name is a ``ConflictError``.
        """
        request = wire.create_collection(name, dim, metric)
        return wire.collection(
            self._call(self._vectors.CreateCollection, request, timeout)
        )

    def upsert(
        self,
        collection: str,
        items: Iterable[VectorItem],
        *,
        timeout: float | None = None,
    ) -> int:
        """
        Store vectors by id (replacing those of the same id); the count stored.
        """
        request = wire.upsert(collection, items)
        return (self._call(self._vectors.Upsert, request, timeout)).upserted

    def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int = 0,
        where: Mapping[str, Any] | None = None,
        ef_search: int = 0,
        timeout: float | None = None,
    ) -> list[VectorMatch]:
        """
        The ``k`` nearest vectors (0: the server's default, 10) whose metadata
        contains ``where``.
        """
        request = wire.search(collection, vector, k, where, ef_search)
        return wire.matches(self._call(self._vectors.Search, request, timeout))

    def delete(
        self, collection: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        """
        Delete vectors by id; the count deleted.
        """
        request = wire.delete(collection, ids)
        return (self._call(self._vectors.Delete, request, timeout)).deleted

    def upsert_texts(
        self,
        collection: str,
        items: Iterable[TextItem],
        *,
        timeout: float | None = None,
    ) -> int:
        """
        Embed texts (by the cortex peer) and store them as vectors.
        """
        request = wire.upsert_texts(collection, items)
        return (self._call(self._vectors.UpsertTexts, request, timeout)).upserted

    def search_text(
        self,
        collection: str,
        text: str,
        *,
        k: int = 0,
        where: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> list[VectorMatch]:
        """
        The ``k`` vectors nearest to the embedding of ``text``.
        """
        request = wire.search_text(collection, text, k, where)
        return wire.matches(self._call(self._vectors.SearchText, request, timeout))

    # --- time series -----------------------------------------------------------

    def write_points(
        self,
        metric: str,
        points: Iterable[Point],
        tags: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Written:
        """
        Write points (aware timestamps) to the series ``metric`` + ``tags``.
        """
        request = wire.write_points(PointsBatch(metric, list(points), dict(tags or {})))
        return wire.written(self._call(self._series.Write, request, timeout))

    def write_stream(
        self, batches: Iterable[PointsBatch], *, timeout: float | None = None
    ) -> Written:
        """
        Bulk ingest as one client stream, one message per batch: stored as one
        transaction when the stream ends, nothing stored if it fails.
        """
        messages = (wire.write_points(batch) for batch in batches)
        try:
            reply = self._series.WriteStream(
                messages,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise error_of(exc) from exc
        return wire.written(reply)

    def query(
        self,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        tags: Mapping[str, str] | None = None,
        limit: int = 0,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> PointPage:
        """
        One page of the points in [start, end) of the series whose tags contain
        ``tags``; pass ``next_cursor`` back for the next page.
        """
        request = wire.query(metric, start, end, tags, limit, cursor)
        return wire.page(self._call(self._series.Query, request, timeout))

    def aggregate(
        self,
        metric: str,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        fn: str = "avg",
        *,
        tags: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[Bucket]:
        """
        ``fn`` (avg, min, max, sum, count, last) per ``bucket`` of time.
        """
        request = wire.aggregate(metric, start, end, bucket, fn, tags)
        return wire.buckets(self._call(self._series.Aggregate, request, timeout))

    # --- spatial ---------------------------------------------------------------

    def upsert_features(
        self, features: Iterable[Feature], *, timeout: float | None = None
    ) -> int:
        """
        Store features by id; the count stored.
        """
        request = wire.upsert_features(features)
        return (self._call(self._spatial.Upsert, request, timeout)).upserted

    def nearby(
        self,
        lon: float,
        lat: float,
        radius_m: float,
        *,
        limit: int = 0,
        timeout: float | None = None,
    ) -> list[FeatureMatch]:
        """
        Features within ``radius_m`` metres, nearest first.
        """
        request = lake_pb2.NearbyRequest(
            lon=lon, lat=lat, radius_m=radius_m, limit=limit
        )
        return wire.feature_matches(self._call(self._spatial.Nearby, request, timeout))

    def nearest(
        self, lon: float, lat: float, *, k: int = 0, timeout: float | None = None
    ) -> list[FeatureMatch]:
        """
        The ``k`` nearest features.
        """
        request = lake_pb2.NearestRequest(lon=lon, lat=lat, k=k)
        return wire.feature_matches(self._call(self._spatial.Nearest, request, timeout))

    def in_box(
        self,
        west: float,
        south: float,
        east: float,
        north: float,
        *,
        limit: int = 0,
        timeout: float | None = None,
    ) -> list[FeatureMatch]:
        """
        Features in the box (across the antimeridian when west > east).
        """
        request = lake_pb2.InBoxRequest(
            west=west, south=south, east=east, north=north, limit=limit
        )
        return wire.feature_matches(self._call(self._spatial.InBox, request, timeout))

    def in_polygon(
        self,
        ring: Sequence[tuple[float, float]],
        *,
        limit: int = 0,
        timeout: float | None = None,
    ) -> list[FeatureMatch]:
        """
        Features inside a closed ring of (lon, lat) vertices.
        """
        request = wire.in_polygon(ring, limit)
        return wire.feature_matches(
            self._call(self._spatial.InPolygon, request, timeout)
        )

    # --- health, usage ---------------------------------------------------------

    def health(self, *, timeout: float | None = None) -> HealthReport:
        """
        Every component's health (no token needed).
        """
        request = health_pb2.GetHealthRequest()
        return wire.health(self._call(self._health.GetHealth, request, timeout))

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """
        The operator figures (admin token).
        """
        request = health_pb2.GetStatusRequest()
        return wire.status(self._call(self._health.GetStatus, request, timeout))

    def usage(
        self,
        *,
        tenant: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        granularity: str = "hour",
        timeout: float | None = None,
    ) -> list[UsageRow]:
        """
        Metered usage per hour or day (``granularity``) and operation.
        """
        request = wire.usage(tenant, since, until, granularity)
        return wire.usage_rows(self._call(self._usage.GetUsage, request, timeout))

    # --- tokens, quotas (admin) ------------------------------------------------

    def create_token(
        self,
        tenant: str,
        scope: str = "write",
        *,
        expires_in: timedelta | None = None,
        note: str = "",
        timeout: float | None = None,
    ) -> NewToken:
        """
        A new token for ``tenant`` (shown once).
        """
        request = wire.create_token(tenant, scope, expires_in, note)
        return wire.new_token(self._call(self._tokens.Create, request, timeout))

    def list_tokens(
        self,
        *,
        tenant: str = "",
        include_revoked: bool = False,
        timeout: float | None = None,
    ) -> list[TokenInfo]:
        """
        Tokens (never the tokens themselves), of one tenant or all.
        """
        request = tokens_pb2.ListTokensRequest(
            tenant=tenant, include_revoked=include_revoked
        )
        reply = self._call(self._tokens.List, request, timeout)
        return [wire.token_info(t) for t in reply.tokens]

    def revoke_token(self, token_id: str, *, timeout: float | None = None) -> TokenInfo:
        """
        Revoke a token by id.
        """
        request = tokens_pb2.RevokeTokenRequest(id=token_id)
        reply = self._call(self._tokens.Revoke, request, timeout)
        return wire.token_info(reply.info)

    def set_quotas(
        self,
        tenant: str,
        values: Mapping[str, float],
        *,
        clear: bool = False,
        timeout: float | None = None,
    ) -> TenantQuotas:
        """
        Set some of a tenant's quotas (``clear``: drop its overrides first).
        """
        request = quotas_pb2.SetQuotasRequest(
            tenant=tenant, values=dict(values), clear=clear
        )
        return wire.tenant_quotas(self._call(self._quotas.Set, request, timeout))

    def show_quotas(
        self, *, tenant: str = "", timeout: float | None = None
    ) -> QuotaOverview:
        """
        The defaults and every tenant with overrides, or one tenant with usage.
        """
        request = quotas_pb2.ShowQuotasRequest(tenant=tenant)
        return wire.quota_overview(self._call(self._quotas.Show, request, timeout))
