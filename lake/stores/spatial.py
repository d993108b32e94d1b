"""
Spatial store: point features with properties.

- Distance queries (radius, nearest-k) use cube + earthdistance with a GiST index on
  ``ll_to_earth(lat, lon)``: ``earth_box`` prunes through the index, ``<->`` orders
  nearest-first through the same index, ``earth_distance`` gives metres.
- Box and polygon containment use a GiST index on the planar ``point(lon, lat)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from lake.models import SPATIAL_SCOPE, Feature, FeatureMatch
from lake.stores.database import Database, record_write
from lake.stores.quotas import UNLIMITED, CapsOf, charge

__all__ = ["PgSpatialStore"]


def _match(row: Any, distance: float = 0.0) -> FeatureMatch:
    feature = Feature(
        id=row["id"],
        lon=row["lon"],
        lat=row["lat"],
        properties=json.loads(row["properties"]),
    )
    return FeatureMatch(feature=feature, distance_m=distance)


class PgSpatialStore:
    """
    Features per tenant, found by distance, box or polygon.
    """

    def __init__(
        self, db: Database, *, events: bool = False, caps: CapsOf | None = None
    ) -> None:
        self._db = db
        self._caps = caps or (lambda _: UNLIMITED)
        self._events = events

    async def upsert(self, tenant: str, features: list[Feature]) -> int:
        """
        Insert or replace ``features`` by id; return how many were written.
        """
        # In id order (a stable sort: of one id repeated, the last still wins): two
        # upserts of the same ids lock their rows in the same order, so they queue
        # rather than deadlock.
        rows = [
            (tenant, f.id, float(f.lon), float(f.lat), json.dumps(f.properties))
            for f in sorted(features, key=attrgetter("id"))
        ]
        ids = list({f.id for f in features})
        async with self._db.transaction(tenant) as conn:
            # Ids stored already are replaced, not counted again. (Two concurrent
            # upserts of one new id may both count it: the cap errs on refusing.)
            existing = await conn.fetchval(
                "SELECT count(*) FROM features WHERE tenant_id = $1 AND id = ANY($2)",
                tenant,
                ids,
            )
            await conn.executemany(
                "INSERT INTO features (tenant_id, id, lon, lat, properties)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)"
                " ON CONFLICT (tenant_id, id) DO UPDATE SET lon = EXCLUDED.lon,"
                " lat = EXCLUDED.lat, properties = EXCLUDED.properties,"
                " updated_at = now()",
                rows,
            )
            event = {"ids": [f.id for f in features]}
            await record_write(
                conn,
                tenant,
                SPATIAL_SCOPE,
                ("features.upserted", event) if self._events else None,
            )
            added = len(ids) - int(existing)
            await charge(conn, tenant, self._caps(tenant), features=added)
        self._db.wrote("features", len(rows))
        return len(rows)

    async def nearby(
        self, tenant: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[FeatureMatch]:
        """
        Features within ``radius_m`` of (lon, lat), nearest first.
        """
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT id, lon, lat, properties, d FROM ("
                " SELECT id, lon, lat, properties,"
                "  earth_distance(ll_to_earth($3, $2), ll_to_earth(lat, lon)) AS d"
                " FROM features WHERE tenant_id = $1"
                "  AND earth_box(ll_to_earth($3, $2), $4) @> ll_to_earth(lat, lon)"
                ") AS near WHERE d <= $4 ORDER BY d, id LIMIT $5",
                tenant,
                lon,
                lat,
                radius_m,
                limit,
            )
        return [_match(r, float(r["d"])) for r in rows]

    async def nearest(
        self, tenant: str, lon: float, lat: float, k: int
    ) -> list[FeatureMatch]:
        """
        The ``k`` features nearest to (lon, lat), by an index-ordered scan.
        """
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT id, lon, lat, properties,"
                " earth_distance(ll_to_earth($3, $2), ll_to_earth(lat, lon)) AS d"
                " FROM features WHERE tenant_id = $1"
                " ORDER BY ll_to_earth(lat, lon) <-> ll_to_earth($3, $2) LIMIT $4",
                tenant,
                lon,
                lat,
                k,
            )
        return [_match(r, float(r["d"])) for r in rows]

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
        Features inside the box, by id; a box with west > east spans the antimeridian.
        """
        # Two longitude spans: the same one twice unless the box wraps.
        spans = (
            (west, east, west, east) if west <= east else (west, 180.0, -180.0, east)
        )
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT id, lon, lat, properties FROM features WHERE tenant_id = $1"
                " AND (geom <@ box(point($2, $6), point($3, $7))"
                "  OR geom <@ box(point($4, $6), point($5, $7)))"
                " ORDER BY id LIMIT $8",
                tenant,
                *spans,
                south,
                north,
                limit,
            )
        return [_match(r) for r in rows]

    async def in_polygon(
        self, tenant: str, ring: Sequence[tuple[float, float]], limit: int
    ) -> list[FeatureMatch]:
        """
        Features inside the polygon (planar lon/lat, boundary included), by id.
        """
        polygon = [(float(x), float(y)) for x, y in ring]
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT id, lon, lat, properties FROM features WHERE tenant_id = $1"
                " AND geom <@ $2::polygon ORDER BY id LIMIT $3",
                tenant,
                polygon,
                limit,
            )
        return [_match(r) for r in rows]

    async def ping(self) -> str | None:
        """
        Prove the features table and earthdistance answer.
        """
        await self._db.probe(
            "SELECT 1 FROM features LIMIT 1",
            "SELECT earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 1))",
        )
        return None
