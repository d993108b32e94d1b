"""
Value objects that operations carry and stores return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "AGGREGATES",
    "METRICS",
    "SPATIAL_SCOPE",
    "Bucket",
    "Collection",
    "Event",
    "Feature",
    "FeatureMatch",
    "Limits",
    "MaintenanceReport",
    "MigrationReport",
    "Point",
    "PointPage",
    "RelayReport",
    "SeriesPoint",
    "ServiceStatus",
    "TextItem",
    "VectorItem",
    "VectorMatch",
    "series_scope",
    "vector_scope",
]

METRICS = ("cosine", "l2", "ip")
AGGREGATES = ("avg", "min", "max", "sum", "count", "last")


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
    max_range: timedelta = timedelta(days=366)
    max_buckets: int = 10000
    max_polygon_vertices: int = 1000
    max_ef_search: int = 1000
    max_text_chars: int = 8192
    # Points one client stream may write; it commits as one transaction.
    max_stream_points: int = 100_000
    # A series' tags live in a btree row that PostgreSQL caps at ~2.7 kB: 16 tags
    # of at most 1 KiB of names and values (UTF-8) keep it under half of that.
    max_tags: int = 16
    max_tags_bytes: int = 1024
    # Metadata, properties and filters (JSON objects): keys counted at every level,
    # and how deep objects and lists may nest.
    max_json_keys: int = 256
    max_json_depth: int = 8


@dataclass(frozen=True, slots=True)
class Collection:
    """
    A vector collection: its name, dimension and distance metric.
    """

    name: str
    dim: int
    metric: str = "cosine"


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
class SeriesPoint:
    """
    A point returned by a range query, with the tags of its series.
    """

    tags: Mapping[str, str]
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class PointPage:
    """
    One page of a range query; ``next_cursor`` continues it, None at the end.
    """

    points: list[SeriesPoint]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Bucket:
    """
    One bucket of an aggregation: its start, the aggregate and the point count.
    """

    start: datetime
    value: float
    count: int


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
    One spatial result with its distance in metres (0 for box and polygon queries).
    """

    feature: Feature
    distance_m: float


# Cache scopes: every write bumps its scope's generation in PostgreSQL, and every
# cached read keys on it (see lake.stores.cache).
SPATIAL_SCOPE = "spatial"


def vector_scope(collection: str) -> str:
    """
    The cache scope of a vector collection.
    """
    return f"vectors:{collection}"


def series_scope(metric: str) -> str:
    """
    The cache scope of a metric's series.
    """
    return f"series:{metric}"


@dataclass(frozen=True, slots=True)
class TextItem:
    """
    One text to embed and store as a vector, with its id and metadata.
    """

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """
    A change event from the outbox, as delivered to the stream peer.
    """

    event_id: str
    tenant: str
    sequence: int
    kind: str
    payload: Mapping[str, Any]
    occurred_at: datetime


# --- reports: what upkeep, migration and event delivery did -------------------------


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """
    Partitions a maintenance run created and dropped.
    """

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """
    What a migration run did: versions applied, versions skipped for want of an
    extension (with the extensions missing).
    """

    applied: list[int] = field(default_factory=list)
    skipped: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RelayReport:
    """
    One relay round: events delivered, and whether the peer refused or failed.
    """

    delivered: int
    failed: bool = False


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """
    Operator figures: the state and usage per operation; once running, the pool,
    the cache, the events waiting for delivery (a reason when unknown), each
    dependency's breaker, retry budget and timeouts, and the read replicas (when
    configured). Holds no tenant data.
    """

    state: str
    operations: Mapping[str, Any]
    pool: Mapping[str, int | float] | None = None
    cache: Mapping[str, Any] | None = None
    events_pending: int | str | None = None
    protection: Mapping[str, Any] | None = None
    replicas: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """
        The figures as plain values, those not known left out.
        """
        figures = {
            "state": self.state,
            "operations": self.operations,
            "pool": self.pool,
            "cache": self.cache,
            "events_pending": self.events_pending,
            "protection": self.protection,
            "replicas": self.replicas,
        }
        return {k: v for k, v in figures.items() if v is not None}
