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


def _session_options(
    *, pgbouncer: bool, application_name: str = "lake", **backstops: int
) -> dict[str, Any]:
    """
    asyncpg's connect options for a connection to PostgreSQL, or to PgBouncer in
    transaction pooling mode (``pgbouncer``).

    Behind PgBouncer a client's session is no server's session: a statement
    prepared on one server connection is unknown on the next (PgBouncer before
    1.21 tracks none), so asyncpg's statement cache is off (asyncpg then parses
    every statement in the same message sequence as its execution); and the
    server-side backstops are not startup parameters, which PgBouncer refuses
    ("unsupported startup parameter") or, listed in ``ignore_startup_parameters``,
    drops without a word. Set them on the role or in PgBouncer instead (README,
    "Lake behind PgBouncer"). ``application_name`` PgBouncer passes on itself.
    """
    settings = {"application_name": application_name}
    if pgbouncer:
        return {"server_settings": settings, "statement_cache_size": 0}
    settings.update((name, str(value)) for name, value in backstops.items())
    return {"server_settings": settings}


def pg_connector(
    *,
    dsn: str,
    password: str = "",
    connect_timeout: float = 5.0,
    statement_timeout_ms: int = 5000,
    application_name: str = "lake",
    pgbouncer: bool = False,
) -> Callable[[], Awaitable[Any]]:
    """
    A function that opens one connection like the pool's, for a component that
    keeps a connection of its own (cache versions, named for the other instances
    to see in ``pg_stat_activity``).
    """
    options = _session_options(
        pgbouncer=pgbouncer,
        application_name=application_name,
        statement_timeout=statement_timeout_ms,
    )

    async def connect() -> Any:
        return await asyncpg.connect(
            dsn=dsn, password=password or None, timeout=connect_timeout, **options
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
    pgbouncer: bool = False,
) -> AsyncIterator[Any]:
    """
    Open an asyncpg pool, prove it with a query, and close it on exit.

    The password travels apart from the DSN so that no logged DSN carries it.
    ``metrics`` hears of every connection the pool opens. ``pgbouncer``: the DSN
    names PgBouncer in transaction pooling mode (see ``_session_options``).
    """
    connect = _timed_connect(metrics) if metrics is not None else None
    options = _session_options(
        pgbouncer=pgbouncer,
        statement_timeout=statement_timeout_ms,
        idle_in_transaction_session_timeout=idle_in_transaction_timeout_ms,
    )
    try:
        pool = await asyncpg.create_pool(
            dsn=dsn,
            password=password or None,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout or None,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            init=_init_connection,
            reset=_keep_session,
            connect=connect,
            **options,
        )
    except Exception as exc:
        raise translate_pg_error(exc) from None
    try:
        async with asyncio.timeout(connect_timeout):
            await pool.fetchval("SELECT 1")
        log.info(
            "pg_pool_opened", min_size=min_size, max_size=max_size, pgbouncer=pgbouncer
        )
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
