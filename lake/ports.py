"""
Ports: what the ServiceManager needs from each component, as Protocols.

The container wires concrete classes to these; tests wire fakes. Nothing here
touches a driver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from lake.codec import Codec
from lake.models import (
    Bucket,
    Collection,
    Event,
    Feature,
    FeatureMatch,
    MaintenanceReport,
    MigrationReport,
    Point,
    PointPage,
    RelayReport,
    VectorItem,
    VectorMatch,
)

__all__ = [
    "MISS",
    "Cache",
    "Components",
    "Database",
    "Mesh",
    "Migrator",
    "Quotas",
    "Reads",
    "Relay",
    "Replicas",
    "ResourceSet",
    "SpatialStore",
    "TimeSeriesStore",
    "VectorStore",
]

T = TypeVar("T")

# What a peek at the cache answers when the entry must be read or loaded.
MISS: Any = object()


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

    async def cache_version(self, tenant: str, scope: str) -> str:
        """
        The cache version of a scope, changed by every write to it.
        """

    def leased_version(self, tenant: str, scope: str) -> str | None:
        """
        The cache version of a scope known without a round trip, or None.
        """

    async def drain(self) -> None:
        """
        Finish or cancel background work (table analyses) before the pool closes.
        """

    def metrics(self) -> dict[str, int | float]:
        """
        Pool size, idle and in-use connections, bounds, acquire timeouts.
        """

    def version_stats(self) -> dict[str, int | float]:
        """
        Cache versions read, the queries that read them, and the lease's figures.
        """


class Cache(Pingable, Protocol):
    """
    The Redis read cache as the manager sees it.
    """

    @property
    def available(self) -> bool:
        """
        False while the cache is being skipped after a failure.
        """

    def peek(self, key: str, version: str | None, route: str = "") -> object:
        """
        The entry of ``key`` held in process at ``version``, or ``MISS``.
        """

    async def read_through(
        self,
        key: str,
        version: Callable[[], Awaitable[str]],
        load: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        route: str = "",
        leased: str | None = None,
    ) -> T:
        """
        The value of ``key`` cached at ``version()``, or ``load()`` once at a time;
        with ``route``, only while caching that route pays; ``leased``: the
        current version is known already (no read of it).
        """

    async def drain(self) -> None:
        """
        Finish or cancel background cache writes.
        """

    def stats(self) -> dict[str, Any]:
        """
        Hits, misses and errors so far.
        """


class Reads(Protocol):
    """
    Reads served through the read cache, keyed on the version of their scope.
    """

    def peek(self, tenant: str, scope: str, operation: object) -> object:
        """
        ``operation``'s answer when it is at hand without waiting, or ``MISS``.
        """

    async def read(
        self,
        tenant: str,
        scope: str,
        operation: object,
        load: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> T:
        """
        ``operation``'s answer at the current version of ``scope``, from the cache
        or from ``load()``.
        """

    async def uncached(
        self, tenant: str, scope: str, load: Callable[[], Awaitable[T]]
    ) -> T:
        """
        ``load()``'s answer, never cached (SearchText: it hangs on a peer's
        embedding), loaded where it sees every write to ``scope`` (a replica).
        """


class VectorStore(Pingable, Protocol):
    """
    Vectors by tenant and collection.
    """

    async def create_collection(
        self, tenant: str, collection: Collection
    ) -> Collection:
        """
        Declare a collection; idempotent.
        """

    async def upsert(
        self, tenant: str, collection: str, items: list[VectorItem]
    ) -> int:
        """
        Insert or replace vectors by id.
        """

    async def search(
        self,
        tenant: str,
        collection: str,
        vector: list[float],
        k: int,
        *,
        where: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
    ) -> list[VectorMatch]:
        """
        The k nearest vectors.
        """

    async def delete(self, tenant: str, collection: str, ids: list[str]) -> int:
        """
        Delete vectors by id.
        """


class TimeSeriesStore(Pingable, Protocol):
    """
    Points by tenant, metric and tags.
    """

    async def write(
        self, tenant: str, metric: str, tags: Mapping[str, str], points: list[Point]
    ) -> int:
        """
        Write points; idempotent on timestamp. Returns the rows stored.
        """

    async def write_many(
        self,
        tenant: str,
        writes: Sequence[tuple[str, Mapping[str, str], list[Point]]],
    ) -> int:
        """
        Write several series' points in one transaction; returns the rows stored.
        """

    async def query(
        self,
        tenant: str,
        metric: str,
        tags: Mapping[str, str],
        start: datetime,
        end: datetime,
        limit: int,
        cursor: str | None = None,
    ) -> PointPage:
        """
        One page of points in a range.
        """

    async def aggregate(
        self,
        tenant: str,
        metric: str,
        tags: Mapping[str, str],
        start: datetime,
        end: datetime,
        bucket: timedelta,
        fn: str,
    ) -> list[Bucket]:
        """
        Points aggregated into time buckets.
        """

    async def maintain(self) -> MaintenanceReport:
        """
        Create partitions ahead; drop expired ones.
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

    async def nearest(
        self, tenant: str, lon: float, lat: float, k: int
    ) -> list[FeatureMatch]:
        """
        The k nearest features.
        """

    async def in_box(
        self,
        tenant: str,
        west: float,
        south: float,
        east: float,
        north: float,
        limit: int,
    ) -> list[FeatureMatch]:
        """
        Features inside a box.
        """

    async def in_polygon(
        self, tenant: str, ring: Sequence[tuple[float, float]], limit: int
    ) -> list[FeatureMatch]:
        """
        Features inside a polygon.
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

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """
        Embed texts with the cortex peer: one vector per text, in order (a peer
        answering otherwise is a MeshError).
        """

    async def publish(self, events: Sequence[Event]) -> int:
        """
        Deliver events to the stream peer.
        """


class Replicas(Protocol):
    """
    The read replicas (``postgres.replica_dsns``), as health and status see them.
    """

    @property
    def names(self) -> list[str]:
        """
        The replicas' names (``1``, ``2``...), in the settings' order.
        """

    async def ping(self, name: str) -> str | None:
        """
        One replica's state as of its last check: raise while it is down, a
        reason while out of rotation.
        """

    def lag_ms(self, name: str) -> float:
        """
        One replica's measured lag behind the primary (0 while unknown).
        """

    def stats(self) -> dict[str, Any]:
        """
        Where reads went, and each replica's state, lag and counts.
        """


class Relay(Protocol):
    """
    Delivers outbox events to the stream peer.
    """

    async def run_once(self) -> RelayReport:
        """
        Deliver what is pending now.
        """

    async def purge(self) -> int:
        """
        Drop old delivered events.
        """

    async def backlog(self) -> int:
        """
        Events waiting for delivery.
        """


class Migrator(Protocol):
    """
    Applies schema migrations.
    """

    async def migrate(self) -> MigrationReport:
        """
        Apply pending migrations; return a report.
        """


class Quotas(Pingable, Protocol):
    """
    Per-tenant rate quotas by operation class (``lake.quotas.rates``).
    """

    async def admit(self, tenant: str, operation_class: str) -> None:
        """
        Count one call, or raise QuotaExceededError.
        """


@dataclass(frozen=True, slots=True)
class Components:
    """
    Everything the manager coordinates, resolved once the resources are open.
    """

    database: Database
    cache: Cache
    reads: Reads
    vectors: VectorStore
    series: TimeSeriesStore
    spatial: SpatialStore
    mesh: Mesh
    migrator: Migrator
    relay: Relay
    quotas: Quotas | None = None
    replicas: Replicas | None = None


class ResourceSet(Protocol):
    """
    Opens and closes the external resources, yielding the components over them.
    """

    async def open(self) -> Components:
        """
        Open every resource; on failure raise, leaving what did open to ``close()``.
        """

    async def close(self) -> None:
        """
        Close every open resource in reverse dependency order; idempotent.
        """
