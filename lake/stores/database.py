"""
Database: the stores' one door to PostgreSQL.

It acquires with a timeout, scopes every transaction to a tenant with
``set_config('app.tenant_id', ..., true)`` (transaction-local, so the pool's reset
cannot leak it), reports pool metrics, and translates driver errors into Lake errors
that carry no SQL, driver names or secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from lake.errors import (
    ConflictError,
    LakeError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
)

__all__ = ["Database", "PoolMetrics", "translate_pg_error"]

# SQLSTATE classes that mean "the server cannot serve now", retry-safe.
_UNAVAILABLE = {"08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03"}
_UNAVAILABLE |= {"53300", "40001", "40P01", "25006"}


def translate_pg_error(exc: BaseException) -> LakeError:
    """
    Map a driver or network error to the Lake error that says what happened.
    """
    if isinstance(exc, LakeError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return StoreUnavailableError("database did not answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return StoreUnavailableError("database refused the connection")
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        return StoreUnavailableError("database connection failed")
    state = getattr(exc, "sqlstate", None) or ""
    if state in _UNAVAILABLE or state.startswith("08"):
        return StoreUnavailableError("database is unavailable")
    if state == "57014":
        return StoreUnavailableError("database statement timed out")
    if state.startswith("28"):
        return StoreError("database rejected the credentials")
    if state == "3D000":
        return StoreError("database does not exist")
    if state.startswith("23"):
        return ConflictError("write conflicts with stored data")
    if state.startswith("22"):
        return ValidationError("value", "rejected by the database as out of range")
    return StoreError("database error")


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """
    A snapshot of the connection pool.
    """

    size: int
    idle: int
    min_size: int
    max_size: int
    acquire_timeouts: int

    @property
    def in_use(self) -> int:
        """
        Connections handed out right now.
        """
        return self.size - self.idle


class Database:
    """
    Tenant-scoped transactions, health and metrics over an asyncpg pool.
    """

    def __init__(self, pool: Any, *, acquire_timeout: float = 2.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        self._acquire_timeouts = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """
        Acquire a connection within the acquire timeout.
        """
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError:
            self._acquire_timeouts += 1
            msg = "no database connection free in time"
            raise StoreUnavailableError(msg) from None
        except Exception as exc:
            raise translate_pg_error(exc) from None
        try:
            yield conn
        finally:
            await self._pool.release(conn)

    @asynccontextmanager
    async def transaction(self, tenant: str | None = None) -> AsyncIterator[Any]:
        """
        Run a transaction, scoped to ``tenant`` when one is given.
        """
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    if tenant is not None:
                        await conn.execute(
                            "SELECT set_config('app.tenant_id', $1, true)", tenant
                        )
                    yield conn
            except LakeError:
                raise
            except Exception as exc:
                raise translate_pg_error(exc) from None

    async def ping(self) -> str | None:
        """
        Prove the database answers and accepts writes.

        Returns None when healthy. Raises StoreUnavailableError on a read-only standby,
        after expiring the pool so that new connections find the new primary.
        """
        async with self.connection() as conn:
            try:
                in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
            except Exception as exc:
                raise translate_pg_error(exc) from None
        if in_recovery:
            await self._pool.expire_connections()
            msg = "connected to a read-only standby"
            raise StoreUnavailableError(msg)
        return None

    async def has_extension(self, name: str) -> bool:
        """
        Tell whether ``name`` is installed in the current database.
        """
        async with self.connection() as conn:
            found = await conn.fetchval(
                "SELECT true FROM pg_extension WHERE extname = $1", name
            )
        return bool(found)

    async def refresh_connections(self) -> None:
        """
        Replace pooled connections, so that types created by migrations get codecs.
        """
        await self._pool.expire_connections()

    def metrics(self) -> PoolMetrics:
        """
        Return the pool's current size, idle count and bounds.
        """
        return PoolMetrics(
            size=self._pool.get_size(),
            idle=self._pool.get_idle_size(),
            min_size=self._pool.get_min_size(),
            max_size=self._pool.get_max_size(),
            acquire_timeouts=self._acquire_timeouts,
        )
