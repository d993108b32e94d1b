"""
Typed operations: what a caller may ask of Lake, and how each input is checked.

The value objects an operation carries (``VectorItem``, ``Point``, ``Feature``,
``Collection``, ``Limits``) are re-exported from ``lake.models`` for callers.

Every operation is a frozen dataclass with ``validate(limits)``, which raises a
``ValidationError`` naming the offending field before anything reaches a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lake.errors import ValidationError
from lake.models import (
    AGGREGATES,
    METRICS,
    Collection,
    Feature,
    Limits,
    Point,
    TextItem,
    VectorItem,
)
from lake.validation import (
    check_batch,
    check_bucket,
    check_finite,
    check_id,
    check_json,
    check_limit,
    check_lon_lat,
    check_name,
    check_normal,
    check_range,
    check_ring,
    check_tags,
    check_tenant,
    check_text,
    check_timestamp,
    check_unique_ids,
    check_vector,
    points_plainly_valid,
)

__all__ = [
    "AggregatePoints",
    "Collection",
    "CreateCollection",
    "DeleteVectors",
    "Feature",
    "FeaturesInBox",
    "FeaturesInPolygon",
    "FeaturesNearby",
    "FeaturesNearest",
    "Limits",
    "Operation",
    "Point",
    "QueryPoints",
    "SearchText",
    "SearchVectors",
    "TextItem",
    "UpsertFeatures",
    "UpsertTexts",
    "UpsertVectors",
    "VectorItem",
    "WritePoints",
    "WritePointsMany",
]


# --- operations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertVectors:
    """
    Insert or replace vectors by id in a tenant's collection.
    """

    tenant: str
    collection: str
    items: Sequence[VectorItem]

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection, "collection")
        check_batch(self.items, "items", limits)
        dim = None
        check_unique_ids([x.id for x in self.items], "items")
        for i, item in enumerate(self.items):
            check_vector(item.vector, f"items[{i}].vector", limits)
            if dim is not None and len(item.vector) != dim:
                raise ValidationError(
                    f"items[{i}].vector",
                    f"has {len(item.vector)} dimensions, not {dim}",
                )
            dim = len(item.vector)
            check_json(item.metadata, f"items[{i}].metadata", limits)


@dataclass(frozen=True, slots=True)
class SearchVectors:
    """
    The k nearest vectors of a collection by its metric, optionally filtered by
    metadata containment (``where``), with an optional per-query ``ef_search``.
    """

    tenant: str
    collection: str
    vector: Sequence[float]
    k: int = 10
    where: Mapping[str, Any] = field(default_factory=dict)
    ef_search: int | None = None

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection, "collection")
        check_vector(self.vector, "vector", limits)
        check_limit(self.k, "k", limits.max_top_k)
        check_json(self.where, "where", limits)
        if self.ef_search is not None:
            check_limit(self.ef_search, "ef_search", limits.max_ef_search)


@dataclass(frozen=True, slots=True)
class WritePoints:
    """
    Write points to one series; a point at an existing timestamp replaces it.
    """

    tenant: str
    metric: str
    points: Sequence[Point]
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.metric, "metric")
        check_tags(self.tags, limits)
        check_batch(self.points, "points", limits)
        if points_plainly_valid(self.points):
            return
        for i, point in enumerate(self.points):
            check_timestamp(point.ts, f"points[{i}].ts")
            check_finite(point.value, f"points[{i}].value")


@dataclass(frozen=True, slots=True)
class QueryPoints:
    """
    Points in ``[start, end)`` of every series of ``metric`` whose tags contain
    ``tags``, by series then time, one page of at most ``limit`` at a time.
    """

    tenant: str
    metric: str
    start: datetime
    end: datetime
    tags: Mapping[str, str] = field(default_factory=dict)
    limit: int = 1000
    cursor: str | None = None

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.metric, "metric")
        check_tags(self.tags, limits)
        check_range(self.start, self.end, limits)
        check_limit(self.limit, "limit", limits.max_range_points)
        if self.cursor is not None and not isinstance(self.cursor, str):
            raise ValidationError("cursor", "must be a string from a previous page")


@dataclass(frozen=True, slots=True)
class UpsertFeatures:
    """
    Insert or replace spatial features by id.
    """

    tenant: str
    features: Sequence[Feature]

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_batch(self.features, "features", limits)
        check_unique_ids([x.id for x in self.features], "features")
        for i, feature in enumerate(self.features):
            check_lon_lat(feature.lon, feature.lat, f"features[{i}].")
            check_json(feature.properties, f"features[{i}].properties", limits)


@dataclass(frozen=True, slots=True)
class FeaturesNearby:
    """
    Features within ``radius_m`` metres of a point, nearest first.
    """

    tenant: str
    lon: float
    lat: float
    radius_m: float
    limit: int = 100

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_lon_lat(self.lon, self.lat, "")
        check_normal(self.radius_m, "radius_m")
        if not 0 < self.radius_m <= limits.max_radius_m:
            raise ValidationError("radius_m", f"must lie in (0, {limits.max_radius_m}]")
        check_limit(self.limit, "limit", limits.max_top_k)


@dataclass(frozen=True, slots=True)
class CreateCollection:
    """
    Declare a vector collection with its dimension and metric; idempotent.
    """

    tenant: str
    collection: Collection

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection.name, "collection.name")
        check_limit(self.collection.dim, "collection.dim", limits.max_vector_dim)
        if self.collection.metric not in METRICS:
            raise ValidationError("collection.metric", f"must be one of {METRICS}")


@dataclass(frozen=True, slots=True)
class DeleteVectors:
    """
    Delete vectors by id from a collection.
    """

    tenant: str
    collection: str
    ids: Sequence[str]

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection, "collection")
        check_batch(self.ids, "ids", limits)
        for i, item_id in enumerate(self.ids):
            check_id(item_id, f"ids[{i}]")


@dataclass(frozen=True, slots=True)
class AggregatePoints:
    """
    Aggregate points of matching series into time buckets (``date_bin``).
    """

    tenant: str
    metric: str
    start: datetime
    end: datetime
    bucket: timedelta
    fn: str = "avg"
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.metric, "metric")
        check_tags(self.tags, limits)
        check_range(self.start, self.end, limits)
        check_bucket(self.bucket, self.end - self.start, limits)
        if self.fn not in AGGREGATES:
            raise ValidationError("fn", f"must be one of {AGGREGATES}")


@dataclass(frozen=True, slots=True)
class FeaturesNearest:
    """
    The ``k`` features nearest to a point, nearest first.
    """

    tenant: str
    lon: float
    lat: float
    k: int = 10

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_lon_lat(self.lon, self.lat, "")
        check_limit(self.k, "k", limits.max_top_k)


@dataclass(frozen=True, slots=True)
class FeaturesInBox:
    """
    Features inside a longitude/latitude box, by id.

    A box whose west edge is east of its east edge crosses the antimeridian.
    """

    tenant: str
    west: float
    south: float
    east: float
    north: float
    limit: int = 1000

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_lon_lat(self.west, self.south, "", lon_name="west", lat_name="south")
        check_lon_lat(self.east, self.north, "", lon_name="east", lat_name="north")
        if self.south > self.north:
            raise ValidationError("south", "must not be north of north")
        check_limit(self.limit, "limit", limits.max_range_points)


@dataclass(frozen=True, slots=True)
class FeaturesInPolygon:
    """
    Features inside a closed polygon ring of (lon, lat) vertices, by id.
    """

    tenant: str
    ring: Sequence[tuple[float, float]]
    limit: int = 1000

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_ring(self.ring, limits)
        check_limit(self.limit, "limit", limits.max_range_points)


@dataclass(frozen=True, slots=True)
class UpsertTexts:
    """
    Embed texts with the cortex peer and store them as vectors by id.
    """

    tenant: str
    collection: str
    items: Sequence[TextItem]

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection, "collection")
        check_batch(self.items, "items", limits)
        check_unique_ids([x.id for x in self.items], "items")
        for i, item in enumerate(self.items):
            check_text(item.text, f"items[{i}].text", limits)
            check_json(item.metadata, f"items[{i}].metadata", limits)


@dataclass(frozen=True, slots=True)
class SearchText:
    """
    Embed a text with the cortex peer and search a collection with it.
    """

    tenant: str
    collection: str
    text: str
    k: int = 10
    where: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        check_name(self.collection, "collection")
        check_text(self.text, "text", limits)
        check_limit(self.k, "k", limits.max_top_k)
        check_json(self.where, "where", limits)


@dataclass(frozen=True, slots=True)
class WritePointsMany:
    """
    Write several series' points at once: all are stored, or none (a client
    stream's messages, committed together).
    """

    tenant: str
    writes: Sequence[WritePoints]

    def validate(self, limits: Limits) -> None:
        """
        Check every write and the total; raise ValidationError naming the first bad
        field as ``writes[i].<field>``.
        """
        check_tenant(self.tenant)
        if not self.writes:
            raise ValidationError("writes", "must not be empty")
        total = sum(len(w.points) for w in self.writes)
        if total > limits.max_stream_points:
            raise ValidationError(
                "writes", f"more than {limits.max_stream_points} points in all"
            )
        for i, write in enumerate(self.writes):
            if write.tenant != self.tenant:
                raise ValidationError(f"writes[{i}].tenant", "differs from tenant")
            try:
                write.validate(limits)
            except ValidationError as exc:
                raise ValidationError(f"writes[{i}].{exc.field}", exc.problem) from None


Operation = (
    CreateCollection
    | UpsertVectors
    | SearchVectors
    | DeleteVectors
    | UpsertTexts
    | SearchText
    | WritePoints
    | WritePointsMany
    | QueryPoints
    | AggregatePoints
    | UpsertFeatures
    | FeaturesNearby
    | FeaturesNearest
    | FeaturesInBox
    | FeaturesInPolygon
)
