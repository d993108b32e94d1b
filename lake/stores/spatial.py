"""
Spatial store: point features with properties; nearby search in metres.

Backed by cube + earthdistance with a GiST index on ``ll_to_earth(lat, lon)``: the
``earth_box`` test uses the index, ``earth_distance`` re-checks the exact radius.
"""

from __future__ import annotations

import json

from lake.operations import Feature, FeatureMatch
from lake.stores.database import Database

__all__ = ["PgSpatialStore"]


class PgSpatialStore:
    """
    Features per tenant, found by distance.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, tenant: str, features: list[Feature]) -> int:
        """
        Insert or replace ``features`` by id; return how many were written.
        """
        rows = [
            (tenant, f.id, float(f.lon), float(f.lat), json.dumps(f.properties))
            for f in features
        ]
        async with self._db.transaction(tenant) as conn:
            await conn.executemany(
                "INSERT INTO features (tenant_id, id, lon, lat, properties)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)"
                " ON CONFLICT (tenant_id, id) DO UPDATE SET lon = EXCLUDED.lon,"
                " lat = EXCLUDED.lat, properties = EXCLUDED.properties,"
                " updated_at = now()",
                rows,
            )
        return len(rows)

    async def nearby(
        self, tenant: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[FeatureMatch]:
        """
        Return features within ``radius_m`` of (lon, lat), nearest first.
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
        return [
            FeatureMatch(
                feature=Feature(
                    id=r["id"],
                    lon=r["lon"],
                    lat=r["lat"],
                    properties=json.loads(r["properties"]),
                ),
                distance_m=float(r["d"]),
            )
            for r in rows
        ]

    async def ping(self) -> str | None:
        """
        Prove the features table and earthdistance answer.
        """
        async with self._db.transaction() as conn:
            await conn.fetchval(
                "SELECT earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 1))"
                " FROM (SELECT 1 FROM features LIMIT 1) AS f"
            )
        return None
