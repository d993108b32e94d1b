"""
lake.v1.Tokens: operators create, list and revoke API tokens (admin scope, which the
interceptor enforces). An admin manages tokens of every tenant.

Create returns the token once; Lake keeps its SHA-256 only, and List shows at most
the first 8 hex digits of that hash. The serving instance re-reads the token table
right after a change; the others within ``auth.refresh_s``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2

from lake.api import convert
from lake.api.auth import Keyring, current_principal
from lake.api.errors import status_of
from lake.errors import StoreUnavailableError, ValidationError
from lake.tokens import Scope, TokenRecord, TokenStore, hash_token, new_token
from lake.v1 import tokens_pb2, tokens_pb2_grpc
from lake.validation import check_tenant

__all__ = ["TokensServicer"]

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_SCOPES = {
    tokens_pb2.TOKEN_SCOPE_UNSPECIFIED: Scope.WRITE,
    tokens_pb2.TOKEN_SCOPE_READ: Scope.READ,
    tokens_pb2.TOKEN_SCOPE_WRITE: Scope.WRITE,
    tokens_pb2.TOKEN_SCOPE_ADMIN: Scope.ADMIN,
}
_WIRE = {
    Scope.READ: tokens_pb2.TOKEN_SCOPE_READ,
    Scope.WRITE: tokens_pb2.TOKEN_SCOPE_WRITE,
    Scope.ADMIN: tokens_pb2.TOKEN_SCOPE_ADMIN,
}
_MAX_NOTE = 200
_MAX_EXPIRY = timedelta(days=3650)


def _stamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when.astimezone(UTC))
    return out


def token_info(record: TokenRecord) -> tokens_pb2.TokenInfo:
    """
    A record in its wire form: never the hash beyond a short prefix.
    """
    return tokens_pb2.TokenInfo(
        id=record.id,
        tenant=record.tenant,
        scope=_WIRE[record.scope],
        note=record.note,
        created_at=_stamp(record.created_at),
        expires_at=_stamp(record.expires_at),
        revoked_at=_stamp(record.revoked_at),
        hash_prefix=record.token_hash[:8],
    )


def _expiry(request: tokens_pb2.CreateTokenRequest) -> datetime | None:
    if not request.HasField("expires_in"):
        return None
    span = convert.required_duration(request, "expires_in")  # range-checked
    if span <= timedelta(0) or span > _MAX_EXPIRY:
        problem = "must be positive and at most 10 years"
        raise ValidationError(field="expires_in", problem=problem)
    return datetime.now(UTC) + span


def _checked_scope(request: tokens_pb2.CreateTokenRequest) -> Scope:
    check_tenant(request.tenant)
    if len(request.note) > _MAX_NOTE:
        problem = f"at most {_MAX_NOTE} characters"
        raise ValidationError(field="note", problem=problem)
    scope = _SCOPES.get(request.scope)
    if scope is None:
        problem = "must be READ, WRITE or ADMIN"
        raise ValidationError(field="scope", problem=problem)
    return scope


def _checked_id(request: tokens_pb2.RevokeTokenRequest) -> str:
    if not request.id:
        problem = "must name a token"
        raise ValidationError(field="id", problem=problem)
    return request.id


class TokensServicer(tokens_pb2_grpc.TokensServicer):
    """
    lake.v1.Tokens over the keyring's token store.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def _store(self) -> TokenStore:
        if self._keyring.store is None:
            msg = "token store not ready"
            raise StoreUnavailableError(msg)
        return self._keyring.store

    async def Create(
        self, request: tokens_pb2.CreateTokenRequest, context: Context
    ) -> tokens_pb2.CreateTokenResponse:
        try:
            scope = _checked_scope(request)
            token = new_token()
            record = await self._store().create(
                tenant=request.tenant,
                scope=scope,
                token_hash=hash_token(token),
                expires_at=_expiry(request),
                note=request.note,
            )
            await self._keyring.refresh()
        except Exception as exc:
            await context.abort(*status_of(exc, "Tokens.Create"))
        log.info(
            "token_created",
            id=record.id,
            tenant=record.tenant,
            scope=scope.label,
            by=current_principal().token_id,
        )
        return tokens_pb2.CreateTokenResponse(info=token_info(record), token=token)

    async def List(
        self, request: tokens_pb2.ListTokensRequest, context: Context
    ) -> tokens_pb2.ListTokensResponse:
        try:
            if request.tenant:
                check_tenant(request.tenant)
            records = await self._store().list_tokens(
                tenant=request.tenant or None, include_revoked=request.include_revoked
            )
        except Exception as exc:
            await context.abort(*status_of(exc, "Tokens.List"))
        return tokens_pb2.ListTokensResponse(tokens=[token_info(r) for r in records])

    async def Revoke(
        self, request: tokens_pb2.RevokeTokenRequest, context: Context
    ) -> tokens_pb2.RevokeTokenResponse:
        try:
            record = await self._store().revoke(_checked_id(request))
            await self._keyring.refresh()
        except Exception as exc:
            await context.abort(*status_of(exc, "Tokens.Revoke"))
        log.info(
            "token_revoked",
            id=record.id,
            tenant=record.tenant,
            by=current_principal().token_id,
        )
        return tokens_pb2.RevokeTokenResponse(info=token_info(record))
