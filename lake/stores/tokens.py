"""
PgTokenStore: API tokens in PostgreSQL (``lake_tokens``), shared by every instance.

Tokens are not tenant data: the store uses the Database's transactions without a
tenant, which run as the tables' owner, and ``lake_app`` has no access to the table.
Only hashes are stored; ids are short public names (``tok_`` + 12 hex digits).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from lake.errors import NotFoundError
from lake.stores.database import Database
from lake.tokens import Scope, TokenRecord

__all__ = ["PgTokenStore"]

_COLUMNS = "id, tenant_id, scope, token_hash, created_at, expires_at, revoked_at, note"
# Revoked or expired tokens stay in the snapshot this long, so a refusal can say why.
_KEEP_REASONS = "interval '1 day'"


def _record(row: Any) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        tenant=row["tenant_id"],
        scope=Scope.parse(row["scope"]),
        token_hash=row["token_hash"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        note=row["note"],
    )


class PgTokenStore:
    """
    Create, list, revoke and snapshot tokens in ``lake_tokens``.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(
        self,
        *,
        tenant: str,
        scope: Scope,
        token_hash: str,
        expires_at: datetime | None = None,
        note: str = "",
    ) -> TokenRecord:
        """
        Store a new token's hash under a fresh id; return its record.
        """
        token_id = "tok_" + secrets.token_hex(6)
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO lake_tokens"  # noqa: S608 -- constant column list
                " (id, tenant_id, scope, token_hash, expires_at, note)"
                f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
                token_id,
                tenant,
                scope.label,
                token_hash,
                expires_at,
                note,
            )
        return _record(row)

    async def list_tokens(
        self, *, tenant: str | None = None, include_revoked: bool = False
    ) -> list[TokenRecord]:
        """
        Tokens, newest first, optionally of one tenant and with revoked ones.
        """
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM lake_tokens"  # noqa: S608 -- constant columns
                " WHERE ($1::text IS NULL OR tenant_id = $1)"
                " AND ($2 OR revoked_at IS NULL)"
                " ORDER BY created_at DESC, id",
                tenant,
                include_revoked,
            )
        return [_record(r) for r in rows]

    async def revoke(self, token_id: str) -> TokenRecord:
        """
        Revoke a token by id; revoking twice keeps the first time.

        Raises:
            NotFoundError: no token has that id.
        """
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE lake_tokens"  # noqa: S608 -- constant column list
                " SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE id = $1 RETURNING {_COLUMNS}",
                token_id,
            )
        if row is None:
            msg = f"no token {token_id}"
            raise NotFoundError(msg)
        return _record(row)

    async def snapshot(self) -> list[TokenRecord]:
        """
        Live tokens, plus those revoked or expired within the last day.
        """
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM lake_tokens"  # noqa: S608 -- constant SQL
                f" WHERE coalesce(revoked_at, expires_at, 'infinity')"
                f" > now() - {_KEEP_REASONS}"
            )
        return [_record(r) for r in rows]
