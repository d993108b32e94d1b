"""
In-memory fakes that satisfy Lake's ports; they record calls and closing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from lake.errors import StoreUnavailableError
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
    SeriesPoint,
    VectorItem,
    VectorMatch,
)
from lake.ports import Components
from lake.stores.cache import CachedReads

T = TypeVar("T")


class FakeResource:
    """
    Stands in for a pool or client; records whether it is open.
    """

    def __init__(
        self, name: str, log: list[str] | None = None, value: object = None
    ) -> None:
        self.name = name
        self.value = self if value is None else value
        self.opened = 0
        self.closed = 0
        self.log = log if log is not None else []

    @property
    def is_open(self) -> bool:
        return self.opened > self.closed

    @asynccontextmanager
    async def __call__(self, **_: Any) -> AsyncIterator[object]:
        self.opened += 1
        self.log.append(f"open {self.name}")
        try:
            yield self.value
        finally:
            self.closed += 1
            self.log.append(f"close {self.name}")


class FailingResource:
    """
    A resource whose opening fails with ``error``.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    @asynccontextmanager
    async def __call__(self, **_: Any) -> AsyncIterator[None]:
        self.attempts += 1
        raise self.error
        yield  # pragma: no cover


class FakePingable:
    def __init__(self) -> None:
        self.down: Exception | None = None
        self.degraded: str | None = None
        self.pings = 0

    async def ping(self) -> str | None:
        self.pings += 1
        if self.down is not None:
            raise self.down
        return self.degraded


class FakeDatabase(FakePingable):
    def __init__(self) -> None:
        super().__init__()
        self.generations: dict[tuple[str, str], int] = {}

    def metrics(self) -> dict[str, int | float]:
        return {"size": 1, "idle": 1, "in_use": 0}

    async def cache_version(self, tenant: str, scope: str) -> str:
        return f"fake:{self.generations.get((tenant, scope), 0)}"

    def version_stats(self) -> dict[str, int | float]:
        return {}

    def leased_version(self, tenant: str, scope: str) -> str | None:
        return None  # no lease: every read asks cache_version

    async def drain(self) -> None:
        self.drained = True


class FakeCache(FakePingable):
    """
    A dict cache that records keys; ``available`` can be switched off.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, bytes] = {}
        self.available = True
        self.loads = 0
        self.drained = False

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
        entry = f"{key}@{leased or await version()}"
        if entry in self.entries:
            return decode(self.entries[entry])
        self.loads += 1
        value = await load()
        self.entries[entry] = encode(value)
        return value

    async def drain(self) -> None:
        self.drained = True

    def stats(self) -> dict[str, int]:
        return {"hits": 0, "misses": self.loads, "errors": 0, "skipping": 0}


class FakeVectorStore(FakePingable):
    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str, str], VectorItem] = {}
        self.collections: dict[tuple[str, str], Collection] = {}
        self.fail_next: list[Exception] = []
        self.searches = 0

    async def create_collection(
        self, tenant: str, collection: Collection
    ) -> Collection:
        self.collections[(tenant, collection.name)] = collection
        return collection

    async def upsert(
        self, tenant: str, collection: str, items: list[VectorItem]
    ) -> int:
        if self.fail_next:
            raise self.fail_next.pop(0)
        for item in items:
            self.rows[(tenant, collection, item.id)] = item
        return len(items)

    async def delete(self, tenant: str, collection: str, ids: list[str]) -> int:
        gone = [k for k in self.rows if k[:2] == (tenant, collection) and k[2] in ids]
        for key in gone:
            del self.rows[key]
        return len(gone)

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
        self.searches += 1

        def cosine(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return 1 - dot / (math.hypot(*a) * math.hypot(*b))

        found = [
            VectorMatch(item.id, cosine(list(item.vector), vector), item.metadata)
            for (t, c, _), item in self.rows.items()
            if t == tenant
            and c == collection
            and len(item.vector) == len(vector)
            and all(item.metadata.get(key) == v for key, v in (where or {}).items())
        ]
        return sorted(found, key=lambda m: m.distance)[:k]


class FakeTimeSeriesStore(FakePingable):
    def __init__(self) -> None:
        super().__init__()
        self.points: dict[tuple[str, str, str, datetime], float] = {}
        self.maintained = 0

    async def write(
        self, tenant: str, metric: str, tags: Mapping[str, str], points: list[Point]
    ) -> int:
        key = repr(sorted(tags.items()))
        for p in points:
            self.points[(tenant, metric, key, p.ts)] = p.value
        return len({p.ts for p in points})

    async def write_many(
        self,
        tenant: str,
        writes: Sequence[tuple[str, Mapping[str, str], list[Point]]],
    ) -> int:
        stored = 0
        for metric, tags, points in writes:
            stored += await self.write(tenant, metric, tags, points)
        return stored

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
        key = repr(sorted(tags.items()))
        found = [
            SeriesPoint(dict(tags), ts, v)
            for (t, m, k, ts), v in self.points.items()
            if (t, m, k) == (tenant, metric, key) and start <= ts < end
        ]
        found.sort(key=lambda p: p.ts)
        offset = int(cursor or 0)
        more = len(found) > offset + limit
        return PointPage(
            found[offset : offset + limit], str(offset + limit) if more else None
        )

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
        page = await self.query(tenant, metric, tags, start, end, 10**9)
        groups: dict[datetime, list[float]] = {}
        for p in page.points:
            groups.setdefault(start + ((p.ts - start) // bucket) * bucket, []).append(
                p.value
            )
        return [
            Bucket(b, sum(vs) / len(vs), len(vs)) for b, vs in sorted(groups.items())
        ]

    async def maintain(self) -> MaintenanceReport:
        self.maintained += 1
        return MaintenanceReport()


class FakeSpatialStore(FakePingable):
    def __init__(self) -> None:
        super().__init__()
        self.features: dict[tuple[str, str], Feature] = {}

    async def upsert(self, tenant: str, features: list[Feature]) -> int:
        for f in features:
            self.features[(tenant, f.id)] = f
        return len(features)

    async def nearby(
        self, tenant: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[FeatureMatch]:
        found = []
        for (t, _), f in self.features.items():
            d = _haversine_m(lon, lat, f.lon, f.lat)
            if t == tenant and d <= radius_m:
                found.append(FeatureMatch(f, d))
        return sorted(found, key=lambda m: m.distance_m)[:limit]

    async def nearest(
        self, tenant: str, lon: float, lat: float, k: int
    ) -> list[FeatureMatch]:
        return await self.nearby(tenant, lon, lat, 2.1e7, k)

    async def in_box(
        self,
        tenant: str,
        west: float,
        south: float,
        east: float,
        north: float,
        limit: int,
    ) -> list[FeatureMatch]:
        found = [
            FeatureMatch(f, 0.0)
            for (t, _), f in sorted(self.features.items())
            if t == tenant and west <= f.lon <= east and south <= f.lat <= north
        ]
        return found[:limit]

    async def in_polygon(
        self, tenant: str, ring: Sequence[tuple[float, float]], limit: int
    ) -> list[FeatureMatch]:
        xs, ys = [x for x, _ in ring], [y for _, y in ring]
        return await self.in_box(tenant, min(xs), min(ys), max(xs), max(ys), limit)


def _haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


class FakeMesh:
    def __init__(self, peers: dict[str, bool] | None = None) -> None:
        self.state = dict(peers or {})
        self.published: list[Event] = []

    @property
    def peers(self) -> list[str]:
        return sorted(self.state)

    async def ping(self, peer: str) -> str | None:
        if not self.state[peer]:
            msg = f"peer {peer} unreachable"
            raise StoreUnavailableError(msg)
        return None

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        # Deterministic: letter counts of a, b, c (plus one, never all zero).
        return [[1.0 + t.count(ch) for ch in "abc"] for t in texts]

    async def publish(self, events: Sequence[Event]) -> int:
        self.published.extend(events)
        return len(events)


class FakeRelay:
    def __init__(self) -> None:
        self.rounds = 0
        self.purges = 0

    async def run_once(self) -> RelayReport:
        self.rounds += 1
        return RelayReport(0)

    async def purge(self) -> int:
        self.purges += 1
        return 0

    async def backlog(self) -> int:
        return 0


class FakeMigrator:
    def __init__(self) -> None:
        self.runs = 0
        self.fail: Exception | None = None

    async def migrate(self) -> MigrationReport:
        self.runs += 1
        if self.fail is not None:
            raise self.fail
        return MigrationReport()


class FakeQuotas:
    """
    Rate quotas that admit every call and remember it; ``refuse`` refuses them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: Exception | None = None

    async def admit(self, tenant: str, operation_class: str) -> None:
        self.calls.append((tenant, operation_class))
        if self.refuse is not None:
            raise self.refuse

    async def ping(self) -> str | None:
        return None


@dataclass
class Fakes:
    """
    One fake per component, typed concretely so tests can inspect them.
    """

    database: FakeDatabase = field(default_factory=FakeDatabase)
    cache: FakeCache = field(default_factory=FakeCache)
    vectors: FakeVectorStore = field(default_factory=FakeVectorStore)
    series: FakeTimeSeriesStore = field(default_factory=FakeTimeSeriesStore)
    spatial: FakeSpatialStore = field(default_factory=FakeSpatialStore)
    mesh: FakeMesh = field(default_factory=FakeMesh)
    migrator: FakeMigrator = field(default_factory=FakeMigrator)
    relay: FakeRelay = field(default_factory=FakeRelay)

    def components(self) -> Components:
        return Components(
            database=self.database,
            cache=self.cache,
            reads=CachedReads(self.cache, self.database),
            vectors=self.vectors,
            series=self.series,
            spatial=self.spatial,
            mesh=self.mesh,
            migrator=self.migrator,
            relay=self.relay,
        )


class FakeResourceSet:
    """
    A ResourceSet that hands out fake components; ``failures`` fail the next opens.
    """

    def __init__(self, components: Components | None = None) -> None:
        self.components = components or Fakes().components()
        self.failures: list[Exception] = []
        self.opens = 0
        self.closes = 0
        self.open_now = False

    async def open(self) -> Components:
        self.opens += 1
        self.open_now = True
        if self.failures:
            raise self.failures.pop(0)
        return self.components

    async def close(self) -> None:
        self.closes += 1
        self.open_now = False
