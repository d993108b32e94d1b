"""
Time-series store: points per (tenant, metric, tags), idempotent on timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from lake.operations import Point
from lake.stores.database import Database

__all__ = ["PgTimeSeriesStore"]


def _tags_json(tags: Mapping[str, str]) -> str:
    # Sorted keys: one series has one canonical tag document.
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))


class PgTimeSeriesStore:
    """
    Points in PostgreSQL; a point written twice is stored once.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(
        self, tenant: str, metric: str, tags: Mapping[str, str], points: list[Point]
    ) -> int:
        """
        Write ``points``; a point at an existing timestamp replaces its value.
        """
        tag_doc = _tags_json(tags)
        rows = [(tenant, metric, tag_doc, p.ts, float(p.value)) for p in points]
        async with self._db.transaction(tenant) as conn:
            await conn.executemany(
                "INSERT INTO ts_points (tenant_id, metric, tags, ts, value)"
                " VALUES ($1, $2, $3::jsonb, $4, $5)"
                " ON CONFLICT (tenant_id, metric, tags, ts)"
                " DO UPDATE SET value = EXCLUDED.value",
                rows,
            )
        return len(rows)

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
        Return up to ``limit`` points in ``[start, end)``, oldest first.
        """
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT ts, value FROM ts_points"
                " WHERE tenant_id = $1 AND metric = $2 AND tags = $3::jsonb"
                " AND ts >= $4 AND ts < $5 ORDER BY ts LIMIT $6",
                tenant,
                metric,
                _tags_json(tags),
                start,
                end,
                limit,
            )
        return [Point(ts=r["ts"], value=r["value"]) for r in rows]

    async def ping(self) -> str | None:
        """
        Prove the points table answers.
        """
        async with self._db.transaction() as conn:
            await conn.fetchval("SELECT 1 FROM ts_points LIMIT 1")
        return None
