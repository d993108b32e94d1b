"""
Ports: what the ServiceManager needs from each component, as Protocols.

The container wires concrete classes to these; tests wire fakes. Nothing here
touches a driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from lake.operations import Feature, FeatureMatch, Point, VectorItem, VectorMatch

__all__ = [
    "Cache",
    "Components",
    "Database",
    "Mesh",
    "Migrator",
    "ResourceSet",
    "SpatialStore",
    "TimeSeriesStore",
    "VectorStore",
]


class Pingable(Protocol):
    """
    Anything with a health probe: None when healthy, a reason when degraded.
    """

    async def ping(self) -> str | None:
        """
        Probe the component; raise when it is down.
        """


class Database(Pingable, Protocol):
    """
    The PostgreSQL connection pool as the manager sees it.
    """


class Cache(Pingable, Protocol):
    """
    The Redis read cache as the manager sees it.
    """


class VectorStore(Pingable, Protocol):
    """
    Vectors by tenant and collection.
    """

    async def upsert(
        self, tenant: str, collection: str, items: list[VectorItem]
    ) -> int:
        """
        Insert or replace vectors by id.
        """

    async def search(
        self, tenant: str, collection: str, vector: list[float], k: int
    ) -> list[VectorMatch]:
        """
        The k nearest vectors.
        """


class TimeSeriesStore(Pingable, Protocol):
    """
    Points by tenant, metric and tags.
    """

    async def write(
        self, tenant: str, metric: str, tags: Mapping[str, str], points: list[Point]
    ) -> int:
        """
        Write points; idempotent on timestamp.
        """

    async def query(
        self,
        tenant: str,
        metric: str,
        tags: Mapping[str, str],
        start: datetime,
        end: datetime,
        limit: int,
    ) -> list[Point]:
        """
        Points in a range, oldest first.
        """


class SpatialStore(Pingable, Protocol):
    """
    Point features by tenant.
    """

    async def upsert(self, tenant: str, features: list[Feature]) -> int:
        """
        Insert or replace features by id.
        """

    async def nearby(
        self, tenant: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[FeatureMatch]:
        """
        Features within a radius, nearest first.
        """


class Mesh(Protocol):
    """
    Peer services by logical name.
    """

    @property
    def peers(self) -> list[str]:
        """
        Configured peer names.
        """

    async def ping(self, peer: str) -> str | None:
        """
        Probe one peer.
        """


class Migrator(Protocol):
    """
    Applies schema migrations.
    """

    async def migrate(self) -> object:
        """
        Apply pending migrations; return a report.
        """


@dataclass(frozen=True, slots=True)
class Components:
    """
    Everything the manager coordinates, resolved once the resources are open.
    """

    database: Database
    cache: Cache
    vectors: VectorStore
    series: TimeSeriesStore
    spatial: SpatialStore
    mesh: Mesh
    migrator: Migrator


class ResourceSet(Protocol):
    """
    Opens and closes the external resources, yielding the components over them.
    """

    async def open(self) -> Components:
        """
        Open every resource; on failure, close what was opened and raise.
        """

    async def close(self) -> None:
        """
        Close every open resource in reverse dependency order; idempotent.
        """
