"""
Typed operations: what a caller may ask of Lake, and how each input is checked.

Every operation is a frozen dataclass with ``validate(limits)``, which raises a
``ValidationError`` naming the offending field before anything reaches a store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lake.errors import ValidationError

__all__ = [
    "Feature",
    "FeatureMatch",
    "FeaturesNearby",
    "Limits",
    "Operation",
    "Point",
    "QueryPoints",
    "SearchVectors",
    "UpsertFeatures",
    "UpsertVectors",
    "VectorItem",
    "VectorMatch",
    "WritePoints",
]

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,62}$")
_MAX_ID_CHARS = 256
_MAX_JSON_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """
    Caps that bound what one operation may ask for.
    """

    max_vector_dim: int = 2000
    max_batch: int = 10000
    max_top_k: int = 1000
    max_range_points: int = 100000
    max_radius_m: float = 20_000_000.0


@dataclass(frozen=True, slots=True)
class VectorItem:
    """
    One vector to store, with its id and metadata.
    """

    id: str
    vector: Sequence[float]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VectorMatch:
    """
    One search result: id, distance and metadata.
    """

    id: str
    distance: float
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Point:
    """
    One time-series point: an aware timestamp and a finite value.
    """

    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Feature:
    """
    One spatial feature: id, longitude, latitude and properties.
    """

    id: str
    lon: float
    lat: float
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeatureMatch:
    """
    One spatial result with its distance in metres.
    """

    feature: Feature
    distance_m: float


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


def _check_lon_lat(lon: object, lat: object, where: str) -> None:
    _check_finite(lon, f"{where}lon")
    _check_finite(lat, f"{where}lat")
    assert isinstance(lon, int | float)  # noqa: S101 -- narrowed by _check_finite
    assert isinstance(lat, int | float)  # noqa: S101
    if not -180.0 <= lon <= 180.0:
        raise ValidationError(f"{where}lon", "must lie in [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise ValidationError(f"{where}lat", "must lie in [-90, 90]")


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
    The k nearest vectors of a tenant's collection by cosine distance.
    """

    tenant: str
    collection: str
    vector: Sequence[float]
    k: int = 10

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        _check_name(self.collection, "collection")
        _check_vector(self.vector, "vector", limits)
        _check_limit(self.k, "k", limits.max_top_k)


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
        for i, point in enumerate(self.points):
            _check_timestamp(point.ts, f"points[{i}].ts")
            _check_finite(point.value, f"points[{i}].value")


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
    The points of one series in ``[start, end)``, oldest first.
    """

    tenant: str
    metric: str
    start: datetime
    end: datetime
    tags: Mapping[str, str] = field(default_factory=dict)
    limit: int = 1000

    def validate(self, limits: Limits) -> None:
        """
        Check every field; raise ValidationError naming the first bad one.
        """
        check_tenant(self.tenant)
        _check_name(self.metric, "metric")
        _check_tags(self.tags)
        _check_timestamp(self.start, "start")
        _check_timestamp(self.end, "end")
        if self.start >= self.end:
            raise ValidationError("start", "must be before end")
        _check_limit(self.limit, "limit", limits.max_range_points)


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


Operation = (
    UpsertVectors
    | SearchVectors
    | WritePoints
    | QueryPoints
    | UpsertFeatures
    | FeaturesNearby
)


def utc(ts: datetime) -> datetime:
    """
    Return ``ts`` converted to UTC.
    """
    return ts.astimezone(UTC)
