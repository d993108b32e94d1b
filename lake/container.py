"""
The composition root: the whole wiring of Lake on one page.

::

    config ─┬─ pg_pool (Resource) ─┬ database ─┬─ vectors ──┐
            ├─ versions (Resource) ┘           │            │
            │                                  ├─ series ───┤
            │                                  ├─ spatial ──┤
            │                                  ├─ migrator ─┼─ components ── manager
            │                                  └─ relay ────┤      (via resources)
            ├─ redis (Resource) ──── cache ─────────────────┤
            └─ mesh_client (Resource) ──────(relay)─────────┘

Resources open only when the manager starts (``ContainerResources.open``) and close in
reverse dependency order when it stops. Tests override any provider with a fake.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any, TypeVar, cast

from dependency_injector import containers, providers

from lake.lag import LoopLag
from lake.manager import ServiceManager
from lake.mesh.client import open_mesh
from lake.mesh.relay import OutboxRelay
from lake.models import Limits
from lake.ports import Components
from lake.resilience import RetryPolicy
from lake.resources.postgres import open_pg_pool, pg_connector
from lake.resources.redis import open_redis
from lake.stores.cache import RedisCache
from lake.stores.database import Database
from lake.stores.migrate import Migrator
from lake.stores.spatial import PgSpatialStore
from lake.stores.timeseries import PgTimeSeriesStore
from lake.stores.tokens import PgTokenStore
from lake.stores.vector import PgVectorStore
from lake.stores.versions import open_version_reader

__all__ = [
    "Container",
    "ContainerResources",
    "ainit",
    "aresolve",
    "ashutdown",
    "create_container",
]

T = TypeVar("T")


def _has_stream(peers: dict[str, Any]) -> bool:
    return "stream" in peers


class ContainerResources:
    """
    The manager's ResourceSet, backed by the container's Resource providers.
    """

    def __init__(self, container: Container) -> None:
        self._container = container

    async def open(self) -> Components:
        """
        Initialise every Resource and resolve the components; close all on failure.
        """
        try:
            await ainit(self._container)
            return await aresolve(self._container.components)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """
        Shut every initialised Resource down (stores before the pool); idempotent.
        """
        await ashutdown(self._container)
        # A later open() must build fresh components over fresh resources.
        self._container.reset_singletons()


class Container(containers.DeclarativeContainer):
    """
    Lake's providers. Build with ``create_container(settings)``.
    """

    __self__ = providers.Self()
    config = providers.Configuration(strict=True)

    pg_pool = providers.Resource(
        open_pg_pool,
        dsn=config.postgres.dsn,
        password=config.postgres.password,
        min_size=config.postgres.min_size,
        max_size=config.postgres.max_size,
        connect_timeout=config.postgres.connect_timeout,
        command_timeout=config.postgres.command_timeout,
        statement_timeout_ms=config.postgres.statement_timeout_ms,
        idle_in_transaction_timeout_ms=config.postgres.idle_in_transaction_timeout_ms,
        max_inactive_connection_lifetime=config.postgres.max_inactive_connection_lifetime,
    )
    redis = providers.Resource(
        open_redis,
        url=config.redis.url,
        password=config.redis.password,
        socket_timeout=config.redis.socket_timeout,
        socket_connect_timeout=config.redis.socket_connect_timeout,
        retries=config.redis.retries,
        health_check_interval=config.redis.health_check_interval,
        max_connections=config.redis.max_connections,
        pool_wait=config.redis.pool_wait,
        ssl_ca_file=config.redis.ssl_ca_file,
        ssl_cert_file=config.redis.ssl_cert_file,
        ssl_key_file=config.redis.ssl_key_file,
    )
    mesh_client = providers.Resource(
        open_mesh,
        peers=config.mesh.peers,
        call_timeout=config.mesh.call_timeout,
        tls=config.mesh.tls,
    )

    # Cache versions, read in batches on a connection of their own.
    versions = providers.Resource(
        open_version_reader,
        providers.Callable(
            pg_connector,
            dsn=config.postgres.dsn,
            password=config.postgres.password,
            connect_timeout=config.postgres.connect_timeout,
            statement_timeout_ms=config.postgres.statement_timeout_ms,
        ),
    )
    database = providers.Singleton(
        Database,
        pg_pool,
        acquire_timeout=config.postgres.acquire_timeout,
        versions=versions,
    )
    cache = providers.Singleton(
        RedisCache,
        redis,
        timeout=config.cache.timeout,
        ttl_s=config.cache.ttl_s,
        cooldown_s=config.cache.cooldown_s,
    )
    # Change events are recorded (outbox) only when a stream peer is configured.
    events = providers.Callable(_has_stream, config.mesh.peers)
    vectors = providers.Singleton(
        PgVectorStore,
        database,
        default_ef_search=config.vectors.ef_search,
        events=events,
    )
    series = providers.Singleton(
        PgTimeSeriesStore,
        database,
        retention_days=config.timeseries.retention_days,
        future_days=config.timeseries.future_days,
        cursor_key=config.timeseries.cursor_key,
        events=events,
    )
    spatial = providers.Singleton(PgSpatialStore, database, events=events)
    migrator = providers.Singleton(Migrator, database)
    # API tokens managed at run time; the server reads them once serving.
    tokens = providers.Singleton(PgTokenStore, database)
    relay = providers.Singleton(
        OutboxRelay,
        database,
        mesh_client,
        enabled=events,
        batch=config.events.batch,
        retention_days=config.events.retention_days,
    )

    components = providers.Singleton(
        Components,
        database=database,
        cache=cache,
        vectors=vectors,
        series=series,
        spatial=spatial,
        mesh=mesh_client,
        migrator=migrator,
        relay=relay,
    )

    manager = providers.Singleton(
        ServiceManager,
        resources=providers.Factory(ContainerResources, __self__),
        limits=providers.Factory(
            Limits,
            max_vector_dim=config.limits.max_vector_dim,
            max_batch=config.limits.max_batch,
            max_top_k=config.limits.max_top_k,
            max_range_points=config.limits.max_range_points,
            max_radius_m=config.limits.max_radius_m,
            max_range=providers.Factory(timedelta, days=config.limits.max_range_days),
            max_buckets=config.limits.max_buckets,
            max_polygon_vertices=config.limits.max_polygon_vertices,
            max_ef_search=config.limits.max_ef_search,
            max_text_chars=config.limits.max_text_chars,
            max_stream_points=config.limits.max_stream_points,
            max_tags=config.limits.max_tags,
            max_tags_bytes=config.limits.max_tags_bytes,
            max_json_keys=config.limits.max_json_keys,
            max_json_depth=config.limits.max_json_depth,
        ),
        startup=providers.Factory(
            RetryPolicy,
            attempts=config.startup.attempts,
            timeout=config.startup.timeout,
            wait_initial=config.startup.wait_initial,
            wait_max=config.startup.wait_max,
        ),
        operations=providers.Factory(
            RetryPolicy,
            attempts=config.operations.attempts,
            timeout=config.operations.timeout,
        ),
        operation_timeout=config.operations.timeout,
        attempt_timeout=config.startup.attempt_timeout,
        check_timeout=config.health.check_timeout,
        grace=config.grpc.grace,
        loop_lag=providers.Singleton(
            LoopLag, threshold_ms=config.health.loop_lag_threshold_ms
        ),
    )


def create_container(settings: dict[str, Any]) -> Container:
    """
    Build a container from validated settings (see ``lake.config.load_settings``).
    """
    container = Container()
    container.config.from_dict(settings, required=True)
    # Per instance: a class-level call is lost, and without it a plain-object
    # override would make init and shutdown synchronous.
    for resource in (
        container.pg_pool,
        container.versions,
        container.redis,
        container.mesh_client,
    ):
        resource.enable_async_mode()
    container.components.enable_async_mode()
    return container


async def ainit(container: containers.Container) -> None:
    """
    Await ``init_resources()``, which returns None when nothing is async.
    """
    result = container.init_resources()
    if result is not None:
        await result


async def ashutdown(container: containers.Container) -> None:
    """
    Await ``shutdown_resources()``, which returns None when nothing is async.
    """
    result = container.shutdown_resources()
    if result is not None:
        await result


async def aresolve(provider: providers.Provider[T]) -> T:
    """
    Call ``provider`` and await the result when it is awaitable.
    """
    result: object = provider()
    if inspect.isawaitable(result):
        result = await result
    return cast(T, result)
