"""
lake.v1.Usage: a tenant's metered usage per hour or day, read from PostgreSQL.

Any token reads its own tenant's usage; an admin token may name another tenant, or
none for every tenant. Before reading, this instance flushes what it has counted,
so the answer includes every call this instance finished; other instances' (and
other worker processes') counts arrive within their flush interval.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2

from lake.api import convert
from lake.api.auth import current_principal
from lake.api.errors import status_of
from lake.errors import ValidationError
from lake.metering import UsageStore, UsageSummary
from lake.tokens import Scope
from lake.v1 import usage_pb2, usage_pb2_grpc
from lake.validation import check_tenant

__all__ = ["UsageServicer"]

Context = grpc.aio.ServicerContext[Any, Any]
StoreSource = Callable[[], "Awaitable[UsageStore] | UsageStore"]

_GRANULARITIES = {
    usage_pb2.GRANULARITY_UNSPECIFIED: "hour",
    usage_pb2.GRANULARITY_HOUR: "hour",
    usage_pb2.GRANULARITY_DAY: "day",
}
_DEFAULT_SPAN = timedelta(hours=24)
_MAX_SPAN = timedelta(days=366)
MAX_ROWS = 10_000


class Flushes(Protocol):
    """
    What the servicer needs of the flusher (``lake.flusher.UsageFlusher``).
    """

    async def flush_quietly(self) -> bool:
        """
        Store this instance's counts; False when that failed (already logged).
        """
        ...

    def stats(self) -> dict[str, int]:
        """
        Rows held, calls dropped and failing flushes, for ``lake status``.
        """
        ...


def _stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when.astimezone(UTC))
    return out


def _range(request: usage_pb2.GetUsageRequest) -> tuple[datetime, datetime]:
    until = (
        convert.required_time(request, "until")
        if request.HasField("until")
        else datetime.now(UTC)
    )
    since = (
        convert.required_time(request, "since")
        if request.HasField("since")
        else until - _DEFAULT_SPAN
    )
    if since >= until:
        raise ValidationError(field="since", problem="must be before until")
    if until - since > _MAX_SPAN:
        raise ValidationError(field="since", problem="at most 366 days before until")
    return since, until


def _granularity(request: usage_pb2.GetUsageRequest) -> str:
    found = _GRANULARITIES.get(request.granularity)
    if found is None:
        raise ValidationError(field="granularity", problem="must be HOUR or DAY")
    return found


def _row(s: UsageSummary) -> usage_pb2.UsageRow:
    return usage_pb2.UsageRow(
        start=_stamp(s.start),
        tenant=s.tenant,
        operation=s.operation,
        calls=s.calls,
        failures=s.failures,
        items_in=s.items_in,
        items_out=s.items_out,
        bytes_in=s.bytes_in,
        bytes_out=s.bytes_out,
        db_ms=s.db_us / 1000.0,
    )


class UsageServicer(usage_pb2_grpc.UsageServicer):
    """
    lake.v1.Usage over the usage store, flushing this instance's counts first.
    """

    def __init__(self, store: StoreSource, flusher: Flushes) -> None:
        self._source = store
        self._flusher = flusher

    def stats(self) -> dict[str, int]:
        """
        This process's metering figures for ``lake status`` (no tenant data).
        """
        return self._flusher.stats()

    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        principal = current_principal()
        tenant: str | None = request.tenant or None
        if principal.scope < Scope.ADMIN:
            if tenant not in (None, principal.tenant):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "reading another tenant's usage needs an admin token",
                )
            tenant = principal.tenant
        try:
            if tenant is not None:
                check_tenant(tenant)
            since, until = _range(request)
            granularity = _granularity(request)
            await self._flusher.flush_quietly()
            found = self._source()
            store = await found if inspect.isawaitable(found) else found
            rows = await store.read(
                tenant=tenant,
                since=since,
                until=until,
                granularity=granularity,
                max_rows=MAX_ROWS,
            )
        except Exception as exc:
            await context.abort(*status_of(exc, "Usage.GetUsage"))
        return usage_pb2.GetUsageResponse(rows=[_row(r) for r in rows])
