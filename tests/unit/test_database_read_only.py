"""
A write refused as read-only (SQLSTATE 25006: the pool still on a standby or a
demoted primary after a failover) recycles the connections, so the retry finds the
primary; other failures recycle nothing.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from lake.errors import ConflictError, StoreUnavailableError
from lake.stores.database import Database
from lake.stores.versions import VersionReader


class Conn:
    """An asyncpg-like connection whose writes fail with ``error``."""

    def __init__(self, error: Exception | None = None, can_write: bool = True) -> None:
        self.error = error
        self.can_write = can_write
        self.terminated = False

    async def execute(self, sql: str, *args: Any) -> str:
        if sql.startswith("INSERT") and self.error is not None:
            raise self.error
        return "OK"

    async def fetchval(self, sql: str, *args: Any) -> object:
        return self.can_write

    def is_closed(self) -> bool:
        return self.terminated

    def terminate(self) -> None:
        self.terminated = True


class Pool:
    """An asyncpg-like pool lending one connection; counts its expiries."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.expired = 0

    async def acquire(self) -> Conn:
        return self.conn

    async def release(self, conn: Conn) -> None:
        return None

    async def expire_connections(self) -> None:
        self.expired += 1


async def _reader(conn: Conn) -> VersionReader:
    async def connect() -> Conn:
        return conn

    reader = VersionReader(connect)
    await reader.probe("SELECT 1")  # opens its connection
    return reader


async def _write(db: Database) -> None:
    async with db.transaction("t1") as conn:
        await conn.execute("INSERT INTO x VALUES (1)")


async def test_a_read_only_refusal_recycles_the_pool_and_the_version_reader():
    conn = Conn(asyncpg.ReadOnlySQLTransactionError("read-only transaction"))
    pool, reader_conn = Pool(conn), Conn()
    db = Database(pool, versions=await _reader(reader_conn))
    with pytest.raises(StoreUnavailableError):
        await _write(db)
    assert pool.expired == 1
    assert reader_conn.terminated  # it reconnects through the DSN on next use


async def test_refusals_in_a_burst_recycle_once():
    """The writes in flight on the old connections all fail; one recycle serves."""
    pool = Pool(Conn(asyncpg.ReadOnlySQLTransactionError("read-only transaction")))
    db = Database(pool)
    for _ in range(3):
        with pytest.raises(StoreUnavailableError):
            await _write(db)
    assert pool.expired == 1


async def test_other_failures_recycle_nothing():
    pool = Pool(Conn(asyncpg.UniqueViolationError("duplicate key")))
    db = Database(pool)
    with pytest.raises(ConflictError):
        await _write(db)
    assert pool.expired == 0


async def test_health_on_a_read_only_server_is_unavailable_and_recycles():
    """A standby, or a primary set default_transaction_read_only: not ready."""
    pool = Pool(Conn(can_write=False))
    db = Database(pool)
    with pytest.raises(StoreUnavailableError, match="read-only"):
        await db.ping()
    assert pool.expired == 1


async def test_health_on_the_primary_recycles_nothing():
    pool = Pool(Conn(can_write=True))
    assert await Database(pool).ping() is None
    assert pool.expired == 0
