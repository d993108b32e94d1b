"""
Per-call authentication and the caller's deadline, as one server interceptor.

Tokens are configured as SHA-256 hashes mapped to tenants (``auth.tokens``); a call
carries ``authorization: Bearer <token>``. The token's hash is compared with every
configured hash in constant time, and the matching tenant becomes the call's tenant:
requests never name their tenant. An optional ``x-lake-tenant`` header that names
another tenant is refused (PERMISSION_DENIED). Health and reflection stay open.

The same wrapper opens the call's deadline scope: the client's remaining time, or
the server's maximum when the client sets none or more.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc

from lake.deadline import deadline_scope

__all__ = [
    "OPEN_PREFIXES",
    "AuthInterceptor",
    "current_tenant",
    "hash_token",
    "new_token",
]

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/lake.v1.LakeHealth/",
)
_TENANT: ContextVar[str] = ContextVar("lake_tenant")


def hash_token(token: str) -> str:
    """
    The SHA-256 hex digest under which a token is configured.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """
    A fresh random API token.
    """
    return "lake_" + secrets.token_urlsafe(32)


def current_tenant() -> str:
    """
    The tenant of the call being served (set by the interceptor).
    """
    return _TENANT.get()


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Interceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_Interceptor):
    """
    Authenticates each call and bounds it by its deadline.
    """

    def __init__(
        self, tokens: Mapping[str, str], *, max_deadline: float, enabled: bool = True
    ) -> None:
        self._hashes = [(h.lower().encode(), tenant) for h, tenant in tokens.items()]
        self._max_deadline = max_deadline
        self._enabled = enabled

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._guard(handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._guard(handler.stream_unary))
        return handler

    def _guard(self, inner: Callable[[Any, Any], Awaitable[Any]]) -> Any:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            tenant = await self._tenant(context)
            left: float | None = context.time_remaining()  # None: no deadline
            budget = (
                self._max_deadline if left is None else min(left, self._max_deadline)
            )
            token = _TENANT.set(tenant)
            try:
                with deadline_scope(budget):
                    return await inner(request, context)
            finally:
                _TENANT.reset(token)

        return guarded

    def _match(self, token: str) -> str | None:
        digest = hash_token(token).encode()
        found = None
        for known, tenant in self._hashes:  # no early exit: constant time
            if hmac.compare_digest(digest, known):
                found = tenant
        return found

    async def _tenant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        metadata = dict(context.invocation_metadata() or ())
        asked = metadata.get("x-lake-tenant")
        if not self._enabled:
            return str(asked or "default")
        header = str(metadata.get("authorization", ""))
        scheme, _, token = header.partition(" ")
        tenant = self._match(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or unknown token"
            )
        if asked is not None and asked != tenant:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "token does not grant that tenant"
            )
        return str(tenant)
