"""
lake.v1.Quotas: operators set and show per-tenant quotas (admin scope, which the
interceptor enforces: the method is not in METHOD_SCOPES).

A running-server RPC, like lake.v1.Tokens, rather than a command on the database
like ``lake migrate``: the same admin token and address as every other operator
command, no database credentials on the operator's machine, values checked by the
server that enforces them, and the serving instance applies a change at once (the
others within ``quotas.refresh_s``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc
import structlog

from lake.api.auth import current_principal
from lake.api.errors import status_of
from lake.errors import LifecycleError
from lake.quotas.policy import QuotaBook
from lake.v1 import quotas_pb2, quotas_pb2_grpc
from lake.validation import check_tenant

__all__ = ["QuotaAdmin", "QuotaControl", "QuotaTable", "QuotasServicer"]

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class QuotaControl(Protocol):
    """
    The running instance's quotas (``lake.quotas.rates.RateQuotas``).
    """

    book: QuotaBook

    async def refresh(self) -> None:
        """
        Re-read the overrides now.
        """


class QuotaTable(Protocol):
    """
    Where overrides and usage live (``lake.stores.quotas.PgQuotaStore``).
    """

    async def set(
        self, tenant: str, values: Mapping[str, float], *, clear: bool = False
    ) -> dict[str, float]:
        """
        Set some of a tenant's overrides.
        """

    async def usage(self, tenant: str) -> dict[str, int]:
        """
        What the tenant stores now.
        """


# The running instance's quotas and their table; LifecycleError before start.
QuotaAdmin = Callable[[], Awaitable[tuple[QuotaControl, QuotaTable]]]


def _tenant_quotas(
    rates: QuotaControl, tenant: str, usage: dict[str, int] | None = None
) -> quotas_pb2.TenantQuotas:
    return quotas_pb2.TenantQuotas(
        tenant=tenant,
        overrides=dict(rates.book.overrides.get(tenant, {})),
        effective=rates.book.effective(tenant),
        usage=usage or {},
    )


class QuotasServicer(quotas_pb2_grpc.QuotasServicer):
    """
    lake.v1.Quotas over the running instance's quotas.
    """

    def __init__(self, admin: QuotaAdmin) -> None:
        self._admin = admin

    async def Set(
        self, request: quotas_pb2.SetQuotasRequest, context: Context
    ) -> quotas_pb2.TenantQuotas:
        try:
            check_tenant(request.tenant)
            rates, store = await self._admin()
            await store.set(request.tenant, dict(request.values), clear=request.clear)
            await rates.refresh()
            reply = _tenant_quotas(rates, request.tenant)
        except Exception as exc:
            await context.abort(*status_of(exc, "Quotas.Set"))
        log.info(
            "quotas_set",
            tenant=request.tenant,
            values=dict(request.values),
            clear=request.clear,
            by=current_principal().token_id,
        )
        return reply

    async def Show(
        self, request: quotas_pb2.ShowQuotasRequest, context: Context
    ) -> quotas_pb2.ShowQuotasResponse:
        try:
            rates, store = await self._admin()
            await rates.refresh()
            if request.tenant:
                check_tenant(request.tenant)
                usage = await store.usage(request.tenant)
                tenants = [_tenant_quotas(rates, request.tenant, usage)]
            else:
                names = sorted(rates.book.overrides)
                tenants = [_tenant_quotas(rates, t) for t in names]
        except Exception as exc:
            await context.abort(*status_of(exc, "Quotas.Show"))
        return quotas_pb2.ShowQuotasResponse(
            defaults=rates.book.defaults, tenants=tenants
        )


async def no_quotas() -> tuple[QuotaControl, QuotaTable]:
    """
    The admin of a server built without quotas (tests of binding only).
    """
    msg = "quotas not available"
    raise LifecycleError(msg)
