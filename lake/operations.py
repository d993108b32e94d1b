"""
Typed operations: what a caller may ask of Lake, and how each input is checked.

The value objects an operation carries (``VectorItem``, ``Point``, ``Feature``,
``Collection``, ``Limits``) are re-exported from ``lake.models`` for callers.

Every operation is a frozen dataclass with ``validate(limits)``, which raises a
``ValidationError`` naming the offending field before anything reaches a store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
    "check_tenant",
]

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,62}$")
_MAX_ID_CHARS = 256
_MAX_JSON_BYTES = 64 * 1024


# --- field checks -------------------------------------------------------------------


def check_tenant(tenant: object) -> None:
    """
    A tenant id: lowercase ASCII letters, digits, ``_`` and ``-``; at most 63 chars.
    """
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ValidationError("tenant", "must match [a-z0-9][a-z0-9_-]{0,62}")


def _check_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(where, "must match [a-z][a-z0-9_.]{0,62} (ASCII only)")


def _check_id(value: object, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(where, "must be a non-empty string")
    if len(value) > _MAX_ID_CHARS:
        raise ValidationError(where, f"longer than {_MAX_ID_CHARS} characters")
    if "\x00" in value:
        raise ValidationError(where, "contains a NUL character")


def _check_json(value: object, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(where, "must be a JSON object")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationError(where, "must be JSON with finite numbers") from None
    if "\\u0000" in text:
        raise ValidationError(where, "contains a NUL character")
    if len(text) > _MAX_JSON_BYTES:
        raise ValidationError(where, f"larger than {_MAX_JSON_BYTES} bytes as JSON")


def _check_finite(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, "must be a number")
    if not math.isfinite(value):
        raise ValidationError(where, "must be finite (no NaN or infinity)")


def _check_batch(items: Sequence[object], where: str, limits: Limits) -> None:
    if not items:
        raise ValidationError(where, "must not be empty")
    if len(items) > limits.max_batch:
        raise ValidationError(where, f"more than {limits.max_batch} items")


def _check_vector(vector: object, where: str, limits: Limits) -> None:
    if isinstance(vector, str | bytes) or not isinstance(vector, Sequence):
        raise ValidationError(where, "must be a list of numbers")
    if not vector:
        raise ValidationError(where, "must not be empty")
    if len(vector) > limits.max_vector_dim:
        raise ValidationError(where, f"more than {limits.max_vector_dim} dimensions")
    for x in vector:
        _check_finite(x, where)


def _check_timestamp(ts: object, where: str) -> None:
    if not isinstance(ts, datetime):
        raise ValidationError(where, "must be a timestamp")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValidationError(where, "must carry a time zone (UTC)")


def _check_lon_lat(
    lon: object,
    lat: object,
    where: str,
    *,
    lon_name: str = "lon",
    lat_name: str = "lat",
) -> None:
    _check_finite(lon, f"{where}{lon_name}")
    _check_finite(lat, f"{where}{lat_name}")
    assert isinstance(lon, int | float)  # noqa: S101 -- narrowed by _check_finite
    assert isinstance(lat, int | float)  # noqa: S101
    if not -180.0 <= lon <= 180.0:
        raise ValidationError(f"{where}{lon_name}", "must lie in [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise ValidationError(f"{where}{lat_name}", "must lie in [-90, 90]")


def _check_limit(value: object, where: str, cap: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, "must be an integer")
    if not 1 <= value <= cap:
        raise ValidationError(where, f"must lie in [1, {cap}]")


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
        _check_name(self.collection, "collection")
        _check_batch(self.items, "items", limits)
        dim = None
        seen: set[str] = set()
        for i, item in enumerate(self.items):
            _check_id(item.id, f"items[{i}].id")
            if item.id in seen:
                raise ValidationError(f"items[{i}].id", "appears twice in the batch")
            seen.add(item.id)
            _check_vector(item.vector, f"items[{i}].vector", limits)
            if dim is not None and len(item.vector) != dim:
                raise ValidationError(
                    f"items[{i}].vector",
                    f"has {len(item.vector)} dimensions, not {dim}",
                )
            dim = len(item.vector)
            _check_json(item.metadata, f"items[{i}].metadata")


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
        _check_name(self.collection, "collection")
        _check_vector(self.vector, "vector", limits)
        _check_limit(self.k, "k", limits.max_top_k)
        _check_json(self.where, "where")
        if self.ef_search is not None:
            _check_limit(self.ef_search, "ef_search", limits.max_ef_search)


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
        _check_name(self.metric, "metric")
        _check_tags(self.tags)
        _check_batch(self.points, "points", limits)
        if _points_plainly_valid(self.points):
            return
        for i, point in enumerate(self.points):
            _check_timestamp(point.ts, f"points[{i}].ts")
            _check_finite(point.value, f"points[{i}].value")


def _points_plainly_valid(points: Sequence[Point]) -> bool:
    """
    The common batch in one pass: float values with a finite sum, datetimes in a
    fixed-offset zone. False sends the batch through the per-point checks, which
    name the first bad point (or pass a batch whose sum merely overflowed).
    """
    try:
        values = [p.value for p in points]
        if not all(type(v) is float for v in values):
            return False
        if not math.isfinite(sum(values)):
            return False
        return all(
            type(p.ts) is datetime and type(p.ts.tzinfo) is timezone for p in points
        )
    except AttributeError:
        return False


def _check_range(start: object, end: object, limits: Limits) -> None:
    _check_timestamp(start, "start")
    _check_timestamp(end, "end")
    assert isinstance(start, datetime)  # noqa: S101 -- narrowed above
    assert isinstance(end, datetime)  # noqa: S101
    if start >= end:
        raise ValidationError("start", "must be before end")
    if end - start > limits.max_range:
        raise ValidationError("end", f"range longer than {limits.max_range.days} days")


def _check_bucket(bucket: object, span: timedelta, limits: Limits) -> None:
    if not isinstance(bucket, timedelta) or bucket <= timedelta(0):
        raise ValidationError("bucket", "must be a positive duration")
    if span / bucket > limits.max_buckets:
        raise ValidationError("bucket", f"more than {limits.max_buckets} buckets")


def _check_ring(ring: object, limits: Limits) -> None:
    if isinstance(ring, str | bytes) or not isinstance(ring, Sequence):
        raise ValidationError("ring", "must be a list of (lon, lat) pairs")
    if len(ring) < 4:
        raise ValidationError("ring", "needs at least 4 vertices (closed triangle)")
    if len(ring) > limits.max_polygon_vertices:
        raise ValidationError(
            "ring", f"more than {limits.max_polygon_vertices} vertices"
        )
    for i, vertex in enumerate(ring):
        if isinstance(vertex, str | bytes) or not isinstance(vertex, Sequence):
            raise ValidationError(f"ring[{i}]", "must be a (lon, lat) pair")
        if len(vertex) != 2:
            raise ValidationError(f"ring[{i}]", "must be a (lon, lat) pair")
        _check_lon_lat(vertex[0], vertex[1], f"ring[{i}].")
    if tuple(ring[0]) != tuple(ring[-1]):
        raise ValidationError("ring", "must be closed: last vertex equals first")


def _check_tags(tags: object) -> None:
    if not isinstance(tags, Mapping):
        raise ValidationError("tags", "must be a mapping of names to strings")
    for key, value in tags.items():
        _check_name(key, "tags")
        if not isinstance(value, str) or "\x00" in value or len(value) > _MAX_ID_CHARS:
            raise ValidationError(f"tags.{key}", "must be a short string without NUL")


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
        _check_name(self.metric, "metric")
        _check_tags(self.tags)
        _check_range(self.start, self.end, limits)
        _check_limit(self.limit, "limit", limits.max_range_points)
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
        _check_batch(self.features, "features", limits)
        seen: set[str] = set()
        for i, feature in enumerate(self.features):
            _check_id(feature.id, f"features[{i}].id")
            if feature.id in seen:
                raise ValidationError(f"features[{i}].id", "appears twice in the batch")
            seen.add(feature.id)
            _check_lon_lat(feature.lon, feature.lat, f"features[{i}].")
            _check_json(feature.properties, f"features[{i}].properties")


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
        _check_lon_lat(self.lon, self.lat, "")
        _check_finite(self.radius_m, "radius_m")
        if not 0 < self.radius_m <= limits.max_radius_m:
            raise ValidationError("radius_m", f"must lie in (0, {limits.max_radius_m}]")
        _check_limit(self.limit, "limit", limits.max_top_k)


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
        _check_name(self.collection.name, "collection.name")
        _check_limit(self.collection.dim, "collection.dim", limits.max_vector_dim)
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
        _check_name(self.collection, "collection")
        _check_batch(self.ids, "ids", limits)
        for i, item_id in enumerate(self.ids):
            _check_id(item_id, f"ids[{i}]")


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
        _check_name(self.metric, "metric")
        _check_tags(self.tags)
        _check_range(self.start, self.end, limits)
        _check_bucket(self.bucket, self.end - self.start, limits)
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
        _check_lon_lat(self.lon, self.lat, "")
        _check_limit(self.k, "k", limits.max_top_k)


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
        _check_lon_lat(self.west, self.south, "", lon_name="west", lat_name="south")
        _check_lon_lat(self.east, self.north, "", lon_name="east", lat_name="north")
        if self.south > self.north:
            raise ValidationError("south", "must not be north of north")
        _check_limit(self.limit, "limit", limits.max_range_points)


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
        _check_ring(self.ring, limits)
        _check_limit(self.limit, "limit", limits.max_range_points)


def _check_text(text: object, where: str, limits: Limits) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(where, "must be non-empty text")
    if len(text) > limits.max_text_chars:
        raise ValidationError(where, f"longer than {limits.max_text_chars} characters")
    if "\x00" in text:
        raise ValidationError(where, "contains a NUL character")


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
        _check_name(self.collection, "collection")
        _check_batch(self.items, "items", limits)
        seen: set[str] = set()
        for i, item in enumerate(self.items):
            _check_id(item.id, f"items[{i}].id")
            if item.id in seen:
                raise ValidationError(f"items[{i}].id", "appears twice in the batch")
            seen.add(item.id)
            _check_text(item.text, f"items[{i}].text", limits)
            _check_json(item.metadata, f"items[{i}].metadata")


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
        _check_name(self.collection, "collection")
        _check_text(self.text, "text", limits)
        _check_limit(self.k, "k", limits.max_top_k)
        _check_json(self.where, "where")


Operation = (
    CreateCollection
    | UpsertVectors
    | SearchVectors
    | DeleteVectors
    | UpsertTexts
    | SearchText
    | WritePoints
    | QueryPoints
    | AggregatePoints
    | UpsertFeatures
    | FeaturesNearby
    | FeaturesNearest
    | FeaturesInBox
    | FeaturesInPolygon
)
