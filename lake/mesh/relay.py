"""
Outbox relay: delivers change events from the outbox to the stream peer.

Each write recorded its event in the outbox in the write's own transaction, so an
acknowledged write always has its event. The relay takes one tenant at a time under
a transaction-scoped advisory lock (several Lake instances share the work, and one
tenant's events go out in order), locks that tenant's oldest pending rows with
``FOR UPDATE SKIP LOCKED``, publishes them, and marks them delivered only after the
peer's acknowledgement. A peer that is down leaves the rows pending for the next
round; event ids let the peer drop a redelivery after a lost acknowledgement.
"""

from __future__ import annotations

import json
import time

import structlog

from lake.errors import LakeError
from lake.models import Event, RelayReport
from lake.ports import Mesh
from lake.stores.database import Database

__all__ = ["OutboxRelay", "RelayReport"]

log = structlog.get_logger(__name__)
_RELAY_LOCK = 0x6C616B72  # "lakr"


class OutboxRelay:
    """
    Moves pending outbox events to the stream peer, in order per tenant.
    """

    def __init__(
        self,
        db: Database,
        mesh: Mesh,
        *,
        enabled: bool = True,
        batch: int = 500,
        retention_days: int = 1,
        log_interval_s: float = 30.0,
    ) -> None:
        self._db = db
        self._mesh = mesh
        self._enabled = enabled
        self._batch = batch
        self._retention_days = retention_days
        self._log_interval_s = log_interval_s
        self._last_logged = float("-inf")

    async def run_once(self) -> RelayReport:
        """
        Deliver what is pending now, tenant by tenant; stop at the first failure.
        """
        if not self._enabled:
            return RelayReport(0)
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT tenant_id FROM outbox WHERE delivered_at IS NULL"
            )
        delivered = 0
        for row in rows:
            try:
                delivered += await self._deliver(row["tenant_id"])
            except LakeError as exc:
                self._complain(exc)
                return RelayReport(delivered, failed=True)
        return RelayReport(delivered)

    async def _deliver(self, tenant: str) -> int:
        total = 0
        while True:
            async with self._db.transaction() as conn:
                mine = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                    _RELAY_LOCK,
                    tenant,
                )
                if not mine:
                    return total  # another instance is delivering this tenant
                rows = await conn.fetch(
                    "SELECT id, event_id, kind, payload, created_at FROM outbox"
                    " WHERE tenant_id = $1 AND delivered_at IS NULL"
                    " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    tenant,
                    self._batch,
                )
                if not rows:
                    return total
                events = [
                    Event(
                        event_id=str(r["event_id"]),
                        tenant=tenant,
                        sequence=r["id"],
                        kind=r["kind"],
                        payload=json.loads(r["payload"]),
                        occurred_at=r["created_at"],
                    )
                    for r in rows
                ]
                await self._mesh.publish(events)
                await conn.execute(
                    "UPDATE outbox SET delivered_at = now() WHERE id = ANY($1)",
                    [r["id"] for r in rows],
                )
            total += len(rows)
            if len(rows) < self._batch:
                return total

    async def backlog(self) -> int:
        """
        How many events wait for delivery.
        """
        async with self._db.transaction() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
            )
        return int(count)

    async def purge(self) -> int:
        """
        Drop delivered events older than the retention; return how many.
        """
        async with self._db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM outbox"
                " WHERE delivered_at < now() - make_interval(days => $1)",
                self._retention_days,
            )
        return int(status.split()[-1])

    def _complain(self, exc: LakeError) -> None:
        now = time.monotonic()
        if now - self._last_logged >= self._log_interval_s:
            self._last_logged = now
            log.warning("events_undelivered", reason=str(exc))
