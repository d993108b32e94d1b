"""
Quotas in PostgreSQL: the per-tenant overrides (``tenant_quotas``, read and written
as the owner, like tokens) and the storage counters (``tenant_usage``) that every
write updates in its own transaction through ``charge()``.

The counter row is updated last in the write's transaction: its row lock, held
until COMMIT, makes concurrent writers of one tenant (on any instance) take turns
for that one statement, so a cap is exact: the write that would pass it is refused
(and rolled back whole), and no other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from lake.errors import QuotaExceededError, ValidationError
from lake.quotas.policy import QUOTA_NAMES, UNLIMITED, Caps
from lake.stores.database import Database

__all__ = ["UNLIMITED", "CapsOf", "PgQuotaStore", "charge", "check_values"]

CapsOf = Callable[[str], Caps]

_CHARGE = """
INSERT INTO tenant_usage AS u
    (tenant_id, collections, vectors, features, points_day, points)
VALUES ($1, greatest($2::bigint, 0), greatest($3::bigint, 0),
        greatest($4::bigint, 0), (now() AT TIME ZONE 'UTC')::date,
        greatest($5::bigint, 0))
ON CONFLICT (tenant_id) DO UPDATE SET
    collections = greatest(u.collections + $2, 0),
    vectors = greatest(u.vectors + $3, 0),
    features = greatest(u.features + $4, 0),
    points = CASE WHEN u.points_day = EXCLUDED.points_day
                  THEN u.points + $5 ELSE EXCLUDED.points END,
    points_day = EXCLUDED.points_day
RETURNING collections, vectors, features, points
"""


def _until_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return (midnight - now).total_seconds()


async def charge(
    conn: Any,
    tenant: str,
    caps: Caps = UNLIMITED,
    *,
    collections: int = 0,
    vectors: int = 0,
    features: int = 0,
    points: int = 0,
) -> None:
    """
    Inside a write's transaction, as its last statement: add what it stored to the
    tenant's counters (negative for deletes); refuse it when a count it raised is
    now over its cap (the caller's transaction then rolls back, counters too).

    Raises:
        QuotaExceededError: naming the cap; ``max_points_per_day`` says when the
            UTC day ends, the others say nothing (waiting will not help).
    """
    row = await conn.fetchrow(_CHARGE, tenant, collections, vectors, features, points)
    checks = (
        ("max_collections", collections, caps.collections, row["collections"]),
        ("max_vectors", vectors, caps.vectors, row["vectors"]),
        ("max_features", features, caps.features, row["features"]),
        ("max_points_per_day", points, caps.points_per_day, row["points"]),
    )
    for name, added, cap, total in checks:
        if added > 0 and cap and total > cap:
            wait = _until_midnight() if name == "max_points_per_day" else None
            raise QuotaExceededError(name, tenant, wait)


def check_values(values: Mapping[str, float]) -> None:
    """
    Refuse unknown quota names and negative or non-finite values.
    """
    for name, value in values.items():
        where = f"values.{name}"
        if name not in QUOTA_NAMES:
            raise ValidationError(where, "is not a quota name")
        if not value >= 0 or value == float("inf"):
            raise ValidationError(where, "must be a number >= 0")


class PgQuotaStore:
    """
    Per-tenant quota overrides and storage counters.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    async def namespace(self) -> str:
        """
        This database's namespace (the cache's): quota budgets of two databases
        sharing one Redis never mix.
        """
        async with self._db.transaction() as conn:
            value = await conn.fetchval(
                "SELECT value FROM lake_meta WHERE key = 'cache_namespace'"
            )
        return str(value or "")

    async def snapshot(self) -> dict[str, dict[str, float]]:
        """
        Every tenant's overrides: tenant -> quota name -> value.
        """
        async with self._db.transaction() as conn:
            rows = await conn.fetch("SELECT tenant_id, name, value FROM tenant_quotas")
        found: dict[str, dict[str, float]] = {}
        for r in rows:
            found.setdefault(r["tenant_id"], {})[r["name"]] = float(r["value"])
        return found

    async def set(
        self, tenant: str, values: Mapping[str, float], *, clear: bool = False
    ) -> dict[str, float]:
        """
        Set ``tenant``'s overrides named in ``values`` (after dropping all of its
        overrides when ``clear``); return its overrides now.
        """
        check_values(values)
        async with self._db.transaction() as conn:
            if clear:
                await conn.execute(
                    "DELETE FROM tenant_quotas WHERE tenant_id = $1", tenant
                )
            if values:
                await conn.executemany(
                    "INSERT INTO tenant_quotas (tenant_id, name, value)"
                    " VALUES ($1, $2, $3) ON CONFLICT (tenant_id, name)"
                    " DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                    [(tenant, n, float(v)) for n, v in values.items()],
                )
            rows = await conn.fetch(
                "SELECT name, value FROM tenant_quotas WHERE tenant_id = $1", tenant
            )
        return {r["name"]: float(r["value"]) for r in rows}

    async def usage(self, tenant: str) -> dict[str, int]:
        """
        What ``tenant`` stores now, as the caps count it (points: today, UTC).
        """
        async with self._db.transaction(tenant) as conn:
            row = await conn.fetchrow(
                "SELECT collections, vectors, features,"
                " CASE WHEN points_day = (now() AT TIME ZONE 'UTC')::date"
                " THEN points ELSE 0 END AS points"
                " FROM tenant_usage WHERE tenant_id = $1",
                tenant,
            )
        if row is None:
            return {"collections": 0, "vectors": 0, "features": 0, "points_today": 0}
        return {
            "collections": int(row["collections"]),
            "vectors": int(row["vectors"]),
            "features": int(row["features"]),
            "points_today": int(row["points"]),
        }
