"""
The read replicas' pools: one small asyncpg pool per replica, opened without
connecting (a replica that is down at start-up delays and fails nothing: it joins
the rotation once its checks pass) and closed in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog

from lake.poolmetrics import PoolMetrics
from lake.protection import Protection
from lake.resources.postgres import (
    _init_connection,
    _keep_session,
    _session_options,
    pg_connector,
)
from lake.stores.database import Database, translate_pg_error
from lake.stores.replicas import Replica, ReplicaSet

__all__ = ["open_replicas", "replica_host"]

log = structlog.get_logger(__name__)

# What the replicas' pooled connections call themselves (pg_stat_activity).
APPLICATION_NAME = "lake-replica"


def replica_host(dsn: str) -> str:
    """
    ``host:port`` of a DSN for operators: never its user or password.
    """
    return urlsplit(dsn).netloc.rpartition("@")[2] or "?"


@asynccontextmanager
async def open_replicas(
    *,
    dsns: list[str],
    primary_dsn: str,
    password: str = "",
    max_size: int = 4,
    connect_timeout: float = 5.0,
    acquire_timeout: float = 2.0,
    statement_timeout_ms: int = 30000,
    idle_in_transaction_timeout_ms: int = 10000,
    max_inactive_connection_lifetime: float = 300.0,
    max_lag: float = 1.0,
    interval: float = 0.2,
    check_timeout: float = 1.0,
    protection: Protection | None = None,
    close_timeout: float = 5.0,
    pgbouncer: bool = False,
) -> AsyncIterator[ReplicaSet | None]:
    """
    The replica set over ``dsns`` (None without any: nothing opened), checked in
    the background until exit.

    A replica authenticates with ``password`` unless its DSN carries one: a
    physical standby has the primary's roles and passwords. ``pgbouncer``: the
    DSNs name PgBouncer in transaction pooling mode, as for the primary.
    """
    if not dsns:
        yield None
        return
    protection = protection or Protection()
    options = _session_options(
        pgbouncer=pgbouncer,
        application_name=APPLICATION_NAME,
        statement_timeout=statement_timeout_ms,
        idle_in_transaction_session_timeout=idle_in_transaction_timeout_ms,
    )
    pools: list[Any] = []
    replica_set: ReplicaSet | None = None
    try:
        replicas = []
        for number, dsn in enumerate(dsns, start=1):
            try:
                pool = await asyncpg.create_pool(
                    dsn=dsn,
                    password=password or None,
                    min_size=0,  # no connection yet: a replica down is no failure
                    max_size=max_size,
                    timeout=connect_timeout,
                    max_inactive_connection_lifetime=max_inactive_connection_lifetime,
                    init=_init_connection,
                    reset=_keep_session,
                    **options,
                )
            except Exception as exc:
                raise translate_pg_error(exc) from None
            pools.append(pool)
            name = str(number)
            guard = protection.replica(name)
            database = Database(
                pool,
                acquire_timeout=acquire_timeout,
                guard=guard,
                pool_metrics=PoolMetrics(),
            )
            check = pg_connector(
                dsn=dsn,
                password=password,
                connect_timeout=min(connect_timeout, check_timeout),
                statement_timeout_ms=statement_timeout_ms,
                pgbouncer=pgbouncer,
            )
            replicas.append(Replica(name, replica_host(dsn), database, guard, check))
        replica_set = ReplicaSet(
            replicas,
            primary=pg_connector(
                dsn=primary_dsn,
                password=password,
                connect_timeout=connect_timeout,
                statement_timeout_ms=statement_timeout_ms,
                pgbouncer=pgbouncer,
            ),
            max_lag=max_lag,
            interval=interval,
            timeout=check_timeout,
        )
        await replica_set.start()
        log.info(
            "replicas_opened",
            replicas=len(replicas),
            in_rotation=sum(r.in_rotation for r in replicas),
            max_size=max_size,
        )
        yield replica_set
    finally:
        if replica_set is not None:
            await replica_set.aclose()
        for pool in pools:
            await _close(pool, close_timeout)


async def _close(pool: Any, close_timeout: float) -> None:
    try:
        async with asyncio.timeout(close_timeout):
            await pool.close()
    except TimeoutError:
        pool.terminate()
    except asyncio.CancelledError:
        pool.terminate()
        raise
    except Exception:  # a replica that died meanwhile: drop what is left
        with contextlib.suppress(Exception):
            pool.terminate()
