"""
PgUsageStore: usage counts in PostgreSQL (``usage_hourly``), added in idempotent
batches by every instance and read back per hour or day.

Usage is operator data: the store uses the Database's transactions without a
tenant (as the tables' owner); ``lake_app`` has no access to these tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lake.errors import ValidationError
from lake.metering import OK, Batch, UsageSummary
from lake.stores.database import Database

__all__ = ["PgUsageStore"]

_ADD = """
INSERT INTO usage_hourly AS u
    (tenant_id, bucket, operation, code,
     calls, items_in, items_out, bytes_in, bytes_out, db_us)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                     $9::bigint[], $10::bigint[])
ON CONFLICT (tenant_id, bucket, operation, code) DO UPDATE SET
    calls = u.calls + EXCLUDED.calls,
    items_in = u.items_in + EXCLUDED.items_in,
    items_out = u.items_out + EXCLUDED.items_out,
    bytes_in = u.bytes_in + EXCLUDED.bytes_in,
    bytes_out = u.bytes_out + EXCLUDED.bytes_out,
    db_us = u.db_us + EXCLUDED.db_us
"""

# $4 is 'hour' or 'day' (checked): date_trunc in UTC, whatever the session's zone.
_READ = """
SELECT date_trunc($4, bucket, 'UTC') AS start, tenant_id, operation, code,
       sum(calls)::bigint AS calls, sum(items_in)::bigint AS items_in,
       sum(items_out)::bigint AS items_out, sum(bytes_in)::bigint AS bytes_in,
       sum(bytes_out)::bigint AS bytes_out, sum(db_us)::bigint AS db_us
FROM usage_hourly
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND bucket >= date_trunc('hour', $2::timestamptz, 'UTC') AND bucket < $3
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
LIMIT $5
"""

_GRANULARITIES = frozenset({"hour", "day"})


class PgUsageStore:
    """
    Add usage batches once each; read usage per hour or day.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    async def add(self, batch: Batch) -> bool:
        """
        Record the batch id and add its rows, in one transaction; a batch whose id
        is recorded already adds nothing (False).
        """
        rows = batch.rows
        async with self._db.transaction() as conn:
            fresh = await conn.fetchval(
                "INSERT INTO usage_batches (batch_id, rows) VALUES ($1, $2)"
                " ON CONFLICT (batch_id) DO NOTHING RETURNING true",
                batch.id,
                len(rows),
            )
            if not fresh:
                return False
            await conn.execute(
                _ADD,
                [r.tenant for r in rows],
                [r.bucket for r in rows],
                [r.operation for r in rows],
                [r.code for r in rows],
                [r.calls for r in rows],
                [r.items_in for r in rows],
                [r.items_out for r in rows],
                [r.bytes_in for r in rows],
                [r.bytes_out for r in rows],
                [r.db_us for r in rows],
            )
        return True

    async def read(
        self,
        *,
        tenant: str | None,
        since: datetime,
        until: datetime,
        granularity: str,
        max_rows: int,
    ) -> list[UsageSummary]:
        """
        Usage per (start, tenant, operation), failures folded in by code.

        Raises:
            ValidationError: more than ``max_rows`` (start, tenant, operation, code)
                rows in the range.
        """
        if granularity not in _GRANULARITIES:
            raise ValidationError(field="granularity", problem="must be HOUR or DAY")
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                _READ, tenant, since, until, granularity, max_rows + 1
            )
        if len(rows) > max_rows:
            problem = f"more than {max_rows} rows; narrow the range or ask for DAY"
            raise ValidationError(field="since", problem=problem)
        return _fold(rows)

    async def purge(self, older_than_days: int) -> int:
        """
        Forget batch ids flushed more than ``older_than_days`` ago.
        """
        async with self._db.transaction() as conn:
            done = await conn.execute(
                "DELETE FROM usage_batches"
                " WHERE flushed_at < now() - make_interval(days => $1)",
                older_than_days,
            )
        return int(str(done).rsplit(" ", 1)[-1] or 0)


def _fold(rows: list[Any]) -> list[UsageSummary]:
    """
    One summary per (start, tenant, operation) from rows per status code.
    """
    found: dict[tuple[datetime, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["start"], r["tenant_id"], r["operation"])
        into = found.setdefault(
            key,
            {
                "calls": 0,
                "failures": {},
                "items_in": 0,
                "items_out": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "db_us": 0,
            },
        )
        into["calls"] += r["calls"]
        if r["code"] != OK:
            into["failures"][r["code"]] = r["calls"]
        for field in ("items_in", "items_out", "bytes_in", "bytes_out", "db_us"):
            into[field] += r[field]
    return [
        UsageSummary(start=start, tenant=tenant, operation=operation, **figures)
        for (start, tenant, operation), figures in found.items()
    ]
