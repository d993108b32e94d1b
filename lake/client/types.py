"""
What the client returns beside Lake's own value objects (``lake.models``, which
import nothing): health, write counts, tokens, usage and quotas, as plain
dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ComponentHealth",
    "HealthReport",
    "NewToken",
    "QuotaOverview",
    "TenantQuotas",
    "TokenInfo",
    "UsageRow",
    "Written",
]


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """
    One component's health: status ``UP``, ``DEGRADED`` or ``DOWN``.
    """

    name: str
    status: str
    latency_ms: float
    reason: str = ""
    critical: bool = False


@dataclass(frozen=True, slots=True)
class HealthReport:
    """
    Lake's health: overall status, readiness, lifecycle state, each component.
    """

    status: str
    ready: bool
    live: bool
    state: str
    components: list[ComponentHealth] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Written:
    """
    A points write: rows stored, and points folded into another of the same
    timestamp in the same request.
    """

    written: int
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """
    A token as Lake lists it (never the token itself).
    """

    id: str
    tenant: str
    scope: str
    note: str
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    hash_prefix: str


@dataclass(frozen=True, slots=True)
class NewToken:
    """
    A token just created: ``token`` is shown this once.
    """

    token: str
    info: TokenInfo


@dataclass(frozen=True, slots=True)
class UsageRow:
    """
    One tenant's use of one operation in one hour or day (UTC).
    """

    start: datetime | None
    tenant: str
    operation: str
    calls: int
    failures: Mapping[str, int]
    items_in: int
    items_out: int
    bytes_in: int
    bytes_out: int
    db_ms: float


@dataclass(frozen=True, slots=True)
class TenantQuotas:
    """
    A tenant's quota overrides, what is in force, and (Show of one tenant) what it
    stores now.
    """

    tenant: str
    overrides: Mapping[str, float]
    effective: Mapping[str, float]
    usage: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QuotaOverview:
    """
    The default quotas and every tenant shown.
    """

    defaults: Mapping[str, float]
    tenants: list[TenantQuotas]

    def as_dict(self) -> dict[str, Any]:
        """
        Plain values, for JSON.
        """
        return {
            "defaults": dict(self.defaults),
            "tenants": [
                {
                    "tenant": t.tenant,
                    "overrides": dict(t.overrides),
                    "effective": dict(t.effective),
                    "usage": dict(t.usage),
                }
                for t in self.tenants
            ],
        }
