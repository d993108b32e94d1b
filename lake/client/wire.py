"""
Plain Python values to lake.v1 requests, and replies back to plain values: the
half of each typed method that the async and the sync client share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from lake.client.types import (
    ComponentHealth,
    HealthReport,
    NewToken,
    QuotaOverview,
    TenantQuotas,
    TokenInfo,
    UsageRow,
    Written,
)
from lake.models import (
    Bucket,
    Collection,
    Feature,
    FeatureMatch,
    Point,
    PointPage,
    SeriesPoint,
    TextItem,
    VectorItem,
    VectorMatch,
)
from lake.v1 import (
    health_pb2,
    lake_pb2,
    quotas_pb2,
    tokens_pb2,
    usage_pb2,
)

__all__ = ["PointsBatch"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_METRICS = {"cosine": 1, "l2": 2, "ip": 3}
_METRIC_NAMES = {v: k for k, v in _METRICS.items()}
_AGGREGATES = {"avg": 1, "min": 2, "max": 3, "sum": 4, "count": 5, "last": 6}
_SCOPES = {"read": 1, "write": 2, "admin": 3}
_SCOPE_NAMES = {v: k for k, v in _SCOPES.items()}
_GRANULARITIES = {"hour": 1, "day": 2}


@dataclass(frozen=True, slots=True)
class PointsBatch:
    """
    Points of one series, one message of a ``write_stream``: ``points`` as
    ``lake.models.Point``s, or ``timestamps_us`` (microseconds since the epoch,
    UTC) and ``values`` as two columns.
    """

    metric: str
    points: Sequence[Point] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    timestamps_us: Sequence[int] = ()
    values: Sequence[float] = ()


# --- plain values <-> protobuf well-known types ------------------------------------


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if value:
        out.update(value)
    return out


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return plain(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def plain(value: struct_pb2.Struct) -> dict[str, Any]:
    """
    A Struct as a dict (numbers are floats, as in JSON).
    """
    return {key: _plain(item) for key, item in value.fields.items()}


def _stamp(when: datetime) -> timestamp_pb2.Timestamp:
    if when.tzinfo is None:
        msg = f"{when.isoformat()} has no time zone"
        raise ValueError(msg)
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when.astimezone(UTC))
    return out


def _when(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def _at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _duration(span: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(span)
    return out


def _choice(table: Mapping[str, int], name: str, what: str) -> int:
    try:
        return table[name]
    except KeyError:
        msg = f"{what} {name!r} is not one of {', '.join(table)}"
        raise ValueError(msg) from None


# --- vectors -------------------------------------------------------------------


def create_collection(
    name: str, dim: int, metric: str
) -> lake_pb2.CreateCollectionRequest:
    return lake_pb2.CreateCollectionRequest(
        collection=name,
        dim=dim,
        metric=_choice(_METRICS, metric, "metric"),  # type: ignore[arg-type]
    )


def collection(reply: lake_pb2.CreateCollectionResponse) -> Collection:
    return Collection(
        reply.collection, reply.dim, _METRIC_NAMES.get(reply.metric, "cosine")
    )


def upsert(
    collection: str, items: Iterable[VectorItem]
) -> lake_pb2.UpsertVectorsRequest:
    return lake_pb2.UpsertVectorsRequest(
        collection=collection,
        items=[
            lake_pb2.VectorItem(
                id=it.id, values=list(it.vector), metadata=_struct(it.metadata)
            )
            for it in items
        ],
    )


def upsert_texts(
    collection: str, items: Iterable[TextItem]
) -> lake_pb2.UpsertTextsRequest:
    return lake_pb2.UpsertTextsRequest(
        collection=collection,
        items=[
            lake_pb2.TextItem(id=it.id, text=it.text, metadata=_struct(it.metadata))
            for it in items
        ],
    )


def search(
    collection: str,
    vector: Sequence[float],
    k: int,
    where: Mapping[str, Any] | None,
    ef_search: int,
) -> lake_pb2.SearchVectorsRequest:
    return lake_pb2.SearchVectorsRequest(
        collection=collection,
        vector=list(vector),
        k=k,
        where=_struct(where),
        ef_search=ef_search,
    )


def search_text(
    collection: str, text: str, k: int, where: Mapping[str, Any] | None
) -> lake_pb2.SearchTextRequest:
    return lake_pb2.SearchTextRequest(
        collection=collection, text=text, k=k, where=_struct(where)
    )


def matches(reply: lake_pb2.SearchVectorsResponse) -> list[VectorMatch]:
    return [VectorMatch(m.id, m.distance, plain(m.metadata)) for m in reply.matches]


def delete(collection: str, ids: Iterable[str]) -> lake_pb2.DeleteVectorsRequest:
    return lake_pb2.DeleteVectorsRequest(collection=collection, ids=list(ids))


# --- time series ---------------------------------------------------------------


def write_points(batch: PointsBatch) -> lake_pb2.WritePointsRequest:
    stamps = list(batch.timestamps_us) + [_us(p.ts) for p in batch.points]
    values = list(batch.values) + [p.value for p in batch.points]
    return lake_pb2.WritePointsRequest(
        metric=batch.metric, tags=dict(batch.tags), timestamps_us=stamps, values=values
    )


def written(reply: lake_pb2.WritePointsResponse) -> Written:
    return Written(reply.written, reply.duplicates)


def query(
    metric: str,
    start: datetime,
    end: datetime,
    tags: Mapping[str, str] | None,
    limit: int,
    cursor: str | None,
) -> lake_pb2.QueryPointsRequest:
    return lake_pb2.QueryPointsRequest(
        metric=metric,
        tags=dict(tags or {}),
        start=_stamp(start),
        end=_stamp(end),
        limit=limit,
        cursor=cursor or "",
    )


def page(reply: lake_pb2.QueryPointsResponse) -> PointPage:
    points = [
        SeriesPoint(dict(s.tags), _at(us), value)
        for s in reply.series
        for us, value in zip(s.timestamps_us, s.values, strict=True)
    ]
    return PointPage(points, reply.next_cursor or None)


def aggregate(
    metric: str,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    fn: str,
    tags: Mapping[str, str] | None,
) -> lake_pb2.AggregatePointsRequest:
    return lake_pb2.AggregatePointsRequest(
        metric=metric,
        tags=dict(tags or {}),
        start=_stamp(start),
        end=_stamp(end),
        bucket=_duration(bucket),
        aggregate=_choice(_AGGREGATES, fn, "aggregate"),  # type: ignore[arg-type]
    )


def buckets(reply: lake_pb2.AggregatePointsResponse) -> list[Bucket]:
    return [
        Bucket(b.start.ToDatetime(tzinfo=UTC), b.value, b.count) for b in reply.buckets
    ]


# --- spatial -------------------------------------------------------------------


def upsert_features(features: Iterable[Feature]) -> lake_pb2.UpsertFeaturesRequest:
    return lake_pb2.UpsertFeaturesRequest(
        features=[
            lake_pb2.Feature(
                id=f.id, lon=f.lon, lat=f.lat, properties=_struct(f.properties)
            )
            for f in features
        ]
    )


def feature_matches(reply: lake_pb2.FeaturesResponse) -> list[FeatureMatch]:
    return [
        FeatureMatch(
            Feature(
                m.feature.id, m.feature.lon, m.feature.lat, plain(m.feature.properties)
            ),
            m.distance_m,
        )
        for m in reply.matches
    ]


def in_polygon(
    ring: Sequence[tuple[float, float]], limit: int
) -> lake_pb2.InPolygonRequest:
    return lake_pb2.InPolygonRequest(
        lons=[lon for lon, _ in ring], lats=[lat for _, lat in ring], limit=limit
    )


# --- health, usage, tokens, quotas ----------------------------------------------


def _status(value: int) -> str:
    return health_pb2.Status.Name(value).removeprefix("STATUS_")  # type: ignore[arg-type]


def health(reply: health_pb2.GetHealthResponse) -> HealthReport:
    return HealthReport(
        status=_status(reply.status),
        ready=reply.ready,
        live=reply.live,
        state=reply.state,
        components=[
            ComponentHealth(
                c.name, _status(c.status), c.latency_ms, c.reason, c.critical
            )
            for c in reply.components
        ],
    )


def _whole(value: Any) -> Any:
    # Struct keeps every number as a double: counters come back whole.
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**53:
        return int(value)
    return value


def status(reply: health_pb2.GetStatusResponse) -> dict[str, Any]:
    figures: dict[str, Any] = _whole(plain(reply.status))
    return figures


def usage(
    tenant: str, since: datetime | None, until: datetime | None, granularity: str
) -> usage_pb2.GetUsageRequest:
    request = usage_pb2.GetUsageRequest(
        tenant=tenant,
        granularity=_choice(_GRANULARITIES, granularity, "granularity"),  # type: ignore[arg-type]
    )
    if since is not None:
        request.since.CopyFrom(_stamp(since))
    if until is not None:
        request.until.CopyFrom(_stamp(until))
    return request


def usage_rows(reply: usage_pb2.GetUsageResponse) -> list[UsageRow]:
    return [
        UsageRow(
            start=_when(r, "start"),
            tenant=r.tenant,
            operation=r.operation,
            calls=r.calls,
            failures=dict(r.failures),
            items_in=r.items_in,
            items_out=r.items_out,
            bytes_in=r.bytes_in,
            bytes_out=r.bytes_out,
            db_ms=r.db_ms,
        )
        for r in reply.rows
    ]


def create_token(
    tenant: str, scope: str, expires_in: timedelta | None, note: str
) -> tokens_pb2.CreateTokenRequest:
    request = tokens_pb2.CreateTokenRequest(
        tenant=tenant,
        scope=_choice(_SCOPES, scope, "scope"),  # type: ignore[arg-type]
        note=note,
    )
    if expires_in is not None:
        request.expires_in.CopyFrom(_duration(expires_in))
    return request


def token_info(info: tokens_pb2.TokenInfo) -> TokenInfo:
    return TokenInfo(
        id=info.id,
        tenant=info.tenant,
        scope=_SCOPE_NAMES.get(info.scope, "write"),
        note=info.note,
        created_at=_when(info, "created_at"),
        expires_at=_when(info, "expires_at"),
        revoked_at=_when(info, "revoked_at"),
        hash_prefix=info.hash_prefix,
    )


def new_token(reply: tokens_pb2.CreateTokenResponse) -> NewToken:
    return NewToken(reply.token, token_info(reply.info))


def tenant_quotas(reply: quotas_pb2.TenantQuotas) -> TenantQuotas:
    return TenantQuotas(
        tenant=reply.tenant,
        overrides=dict(sorted(reply.overrides.items())),
        effective=dict(sorted(reply.effective.items())),
        usage=dict(sorted(reply.usage.items())),
    )


def quota_overview(reply: quotas_pb2.ShowQuotasResponse) -> QuotaOverview:
    return QuotaOverview(
        defaults=dict(sorted(reply.defaults.items())),
        tenants=[tenant_quotas(t) for t in reply.tenants],
    )
