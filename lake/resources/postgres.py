"""
The asyncpg pool: opened, proven and closed in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from pgvector.asyncpg import register_vector

from lake.poolmetrics import PoolMetrics
from lake.stores.database import translate_pg_error

__all__ = ["open_pg_pool", "pg_connector"]

log = structlog.get_logger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # The binary pgvector codec, where the extension exists: on a server without
    # pgvector the vector store reports itself unavailable and the rest serves.
    try:
        await register_vector(conn)
    except ValueError:
        return


async def _keep_session(conn: asyncpg.Connection) -> None:
    """
    Skip asyncpg's per-release ``RESET ALL`` round trip.

    asyncpg still rolls back a transaction left open before calling this. Lake sets
    session state only transaction-locally (``SET LOCAL ROLE``,
    ``set_config(..., true)``), so nothing else can outlive a transaction; the
    tenant-isolation tests check that the next user of a connection inherits none.
    """


def _timed_connect(metrics: PoolMetrics) -> Callable[..., Awaitable[Any]]:
    """
    asyncpg's connect, reporting each new pooled connection and how long opening
    it took (the pool's ``connect`` hook: nothing on the acquire path).
    """

    async def connect(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        conn = await asyncpg.connect(*args, **kwargs)
        metrics.connected(time.perf_counter() - started)
        return conn

    return connect


def pg_connector(
    *,
    dsn: str,
    password: str = "",
    connect_timeout: float = 5.0,
    statement_timeout_ms: int = 5000,
    application_name: str = "lake",
) -> Callable[[], Awaitable[Any]]:
    """
    A function that opens one connection like the pool's, for a component that
    keeps a connection of its own (cache versions, named for the other instances
    to see in ``pg_stat_activity``).
    """

    async def connect() -> Any:
        return await asyncpg.connect(
            dsn=dsn,
            password=password or None,
            timeout=connect_timeout,
            server_settings={
                "application_name": application_name,
                "statement_timeout": str(statement_timeout_ms),
            },
        )

    return connect


@asynccontextmanager
async def open_pg_pool(
    *,
    dsn: str,
    password: str = "",
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float = 0.0,
    statement_timeout_ms: int = 5000,
    idle_in_transaction_timeout_ms: int = 10000,
    max_inactive_connection_lifetime: float = 300.0,
    close_timeout: float = 5.0,
    metrics: PoolMetrics | None = None,
) -> AsyncIterator[Any]:
    """
    Open an asyncpg pool, prove it with a query, and close it on exit.

    The password travels apart from the DSN so that no logged DSN carries it.
    ``metrics`` hears of every connection the pool opens.
    """
    connect = _timed_connect(metrics) if metrics is not None else None
    try:
        pool = await asyncpg.create_pool(
            dsn=dsn,
            password=password or None,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout or None,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            server_settings={
                "application_name": "lake",
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(
                    idle_in_transaction_timeout_ms
                ),
            },
            init=_init_connection,
            reset=_keep_session,
            connect=connect,
        )
    except Exception as exc:
        raise translate_pg_error(exc) from None
    try:
        async with asyncio.timeout(connect_timeout):
            await pool.fetchval("SELECT 1")
        log.info("pg_pool_opened", min_size=min_size, max_size=max_size)
        yield pool
    finally:
        try:
            async with asyncio.timeout(close_timeout):
                await pool.close()
        except TimeoutError:
            pool.terminate()
            log.warning("pg_pool_terminated", after_s=close_timeout)
        except asyncio.CancelledError:
            # Stopping at once (a second signal): drop the connections, don't wait.
            pool.terminate()
            log.warning("pg_pool_terminated", reason="cancelled")
            raise
        log.info("pg_pool_closed")
