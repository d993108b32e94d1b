"""
API tokens as data: scopes, the record an operator sees, and the store port.

A token is a random string handed out once; Lake keeps only its SHA-256. Each token
acts for one tenant with one scope, ``read < write < admin``: a write token may read,
an admin token may do anything, including managing tokens for every tenant.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from lake.errors import ValidationError

__all__ = [
    "Scope",
    "TokenRecord",
    "TokenStore",
    "hash_token",
    "new_token",
    "parse_duration",
]


class Scope(enum.IntEnum):
    """
    What a token may do; a larger scope includes every smaller one.
    """

    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Scope:
        """
        The scope named ``text`` (read, write or admin).
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            problem = "must be read, write or admin"
            raise ValidationError(field="scope", problem=problem) from None

    @property
    def label(self) -> str:
        """
        The lowercase name stored and printed.
        """
        return self.name.lower()


def hash_token(token: str) -> str:
    """
    The SHA-256 hex digest under which a token is stored and configured.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """
    A fresh random API token (256 bits).
    """
    return "lake_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """
    One stored token: never the token itself, only its hash.
    """

    id: str
    tenant: str
    scope: Scope
    token_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    note: str = ""


class TokenStore(Protocol):
    """
    Where tokens are kept, shared by every Lake instance on one database.
    """

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
        Store a new token's hash; return its record (with a fresh public id).
        """

    async def list_tokens(
        self, *, tenant: str | None = None, include_revoked: bool = False
    ) -> list[TokenRecord]:
        """
        Tokens, newest first, optionally of one tenant and with revoked ones.
        """

    async def revoke(self, token_id: str) -> TokenRecord:
        """
        Revoke a token by id (idempotent). Raises NotFoundError for an unknown id.
        """

    async def snapshot(self) -> list[TokenRecord]:
        """
        Every token an instance must know to authenticate: live ones, and recently
        revoked or expired ones so that a refusal can say why.
        """


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """
    A positive duration such as ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``.
    """
    match = _DURATION.match(text.lower())
    if match is None or int(match[1]) == 0:
        problem = "must be a positive number with s, m, h, d or w, as in 30d"
        raise ValidationError(field="expires", problem=problem)
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])
