"""
The composition root: the whole wiring of Lake on one page.

::

    config ─┬─ pg_pool (Resource) ─┬ database ─┬─ vectors ──┐
            ├─ versions (Resource) ┘           ├─ series ───┤
            │                                  ├─ spatial ──┤
            │                                  ├─ migrator ─┼─ components ── manager
            │                                  ├─ relay ────┤   (through resources)
            │                                  └─ reads ────┤
            ├─ replicas (Resource) ── (reads: routed) ──────┤
            ├─ redis (Resource) ───── cache ──── (reads) ───┤
            └─ mesh_client (Resource) ───── (relay) ────────┘
    fences ── versions, reads (the WAL positions replica reads wait for)
    limits, startup_policy, operation_policy, usage, loop_lag ── (manager)
    database ── tokens (the token store)

    admission ──┬─ admission_guard ──┐
    keyring ────┼─ auth ─────────────┼─ layers ── interceptors (one Chain) ─┐
    auth_failures ┘   decode_guard ──┘                                      │
    server_credentials, manager ─────────────────────────── server ─────────┤
    manager ─┬─ upkeep ─────────┬─ workers (relay only with a stream        ├─ lake
    events ──┴─ relay_worker ───┘   peer: events, decided once) ────────────┤
    manager, tokens (resolved once the resources are open) ─────────────────┘
    manager ── migration (lake migrate: lake without a server or workers)

    operation_metrics (manager), pool_metrics (pg_pool, database), quota_rejections,
    cache/events sources (manager), loop lag ── metrics_sources ── metrics
    metrics ── metrics_server (worker 0 only) ── lake;  metrics_publisher (others)
    meter ─┬─ metering (a layer: each data call once) ── layers
           └─ usage_flusher (over usage_store) ── workers, lake (drains)
    usage_store, usage_flusher ── usage_api (lake.v1.Usage) ── server
    span_exporter ── span_processor ── tracing (drained by lake) ── tracer ── manager,
        database, cache, mesh_client, layers (first, only when on)

``lake`` (``lake.bootstrap.Lake``) is what ``lake serve`` runs: it starts the server,
the manager, then the workers, and stops them in reverse, once. The manager opens
the Resources through ``resources`` (a ``ProviderResources`` that holds only the
resource providers and the components provider, never the container) when it
starts, and closes them in reverse order when it stops or an attempt fails. Tests
override any provider with a fake, the server-side ones included.
"""

from __future__ import annotations

import asyncio
import inspect
import operator
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

from dependency_injector import containers, providers

from lake import tracing as otel
from lake.api.admission import Admission, AdmissionInterceptor
from lake.api.auth import AuthInterceptor, FailureLimiter, Keyring
from lake.api.decode import DecodeGuard
from lake.api.metering import MeteringInterceptor
from lake.api.quotas import QuotaAdmin, QuotaControl, QuotaTable
from lake.api.server import LakeServer
from lake.api.tracing import TracingInterceptor
from lake.api.usage import UsageServicer
from lake.api.wrapped import chained
from lake.bootstrap import Lake
from lake.errors import LifecycleError
from lake.flusher import UsageFlusher
from lake.lag import LoopLag
from lake.manager import ServiceManager, State
from lake.mesh.client import open_mesh
from lake.mesh.relay import OutboxRelay
from lake.metering import Meter
from lake.metrics import (
    CacheSource,
    EventsSource,
    LoopLagSource,
    MetricsPublisher,
    MetricsRegistry,
    ReplicaSource,
    process_source,
)
from lake.metricserver import MetricsServer
from lake.models import Limits
from lake.opmetrics import OperationMetrics, QuotaRejections
from lake.poolmetrics import PoolMetrics
from lake.ports import Components
from lake.protection import (
    BreakerSettings,
    BudgetSettings,
    FairGate,
    GateSettings,
    Protection,
    TimeoutSettings,
)
from lake.protection.metrics import ProtectionSource
from lake.quotas.policy import QuotaBook
from lake.quotas.rates import RateQuotas
from lake.resilience import RetryPolicy
from lake.resources.postgres import open_pg_pool, pg_connector
from lake.resources.redis import open_redis
from lake.resources.replicas import open_replicas
from lake.stores.cache import CachedReads, RedisCache
from lake.stores.database import Database
from lake.stores.fences import FenceBook
from lake.stores.lease import lease_app_name
from lake.stores.migrate import Migrator
from lake.stores.quotas import PgQuotaStore
from lake.stores.replicas import routed_reads
from lake.stores.spatial import PgSpatialStore
from lake.stores.timeseries import PgTimeSeriesStore
from lake.stores.tokens import PgTokenStore
from lake.stores.usage import PgUsageStore
from lake.stores.vector import PgVectorStore
from lake.stores.versions import open_version_reader
from lake.tls import grpc_server_credentials
from lake.usage import Usage
from lake.workers import RelayWorker, UpkeepWorker, select_workers
from lake.workerstatus import StatusBoard, StatusPublisher

__all__ = [
    "Container",
    "ProviderResources",
    "aresolve",
    "create_container",
]

T = TypeVar("T")


def _has_stream(peers: dict[str, Any]) -> bool:
    return "stream" in peers


def _metrics_address(address: str, index: int) -> str:
    # One listener for all worker processes: worker 0 adds up the others.
    return address if index == 0 else ""


def _fences_for(replica_dsns: Sequence[str], book: FenceBook) -> FenceBook | None:
    # Version batches read the primary's WAL position only when replicas use it.
    return book if replica_dsns else None


def _plus(chosen: Sequence[Any], extra: Any, wanted: bool) -> list[Any]:
    return [*chosen, extra] if wanted else list(chosen)


def _traced(layers: Sequence[Any], tracer: Any) -> list[Any]:
    # Tracing off: the server's layers have no tracing layer at all.
    if tracer is None:
        return list(layers)
    return [TracingInterceptor(tracer), *layers]


def _quota_admin(
    manager: ServiceManager,
    rates: providers.Provider[RateQuotas],
    store: providers.Provider[PgQuotaStore],
) -> QuotaAdmin:
    # lake.v1.Quotas reaches the running instance's quotas (never opens anything).
    async def admin() -> tuple[QuotaControl, QuotaTable]:
        if manager.state is not State.RUNNING:
            msg = f"lake is {manager.state.value}, not running"
            raise LifecycleError(msg)
        return await aresolve(rates), await aresolve(store)

    return admin


class ProviderResources:
    """
    The manager's ResourceSet: the container's Resource providers and the
    components provider over them (never the container itself).

    Args:
        resources: the Resource providers, in opening order; closed in reverse.
        components: resolves the components once the resources are open.
    """

    def __init__(
        self,
        resources: Sequence[providers.Provider[Any]],
        components: providers.Singleton[Components],
    ) -> None:
        self._resources = list(resources)
        self._components = components

    async def open(self) -> Components:
        """
        Open every resource concurrently, then resolve the components; on failure
        raise the first error, leaving what did open to ``close()``.
        """
        results = await asyncio.gather(
            *(_init(r) for r in self._effective()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return await aresolve(self._components)

    async def close(self) -> None:
        """
        Shut every opened resource down, last opened first; idempotent.
        """
        for resource in reversed(self._effective()):
            if resource.initialized:
                await _shutdown(resource)
        # A later open() must build fresh components over fresh resources.
        for singleton in self._components.traverse(types=[providers.Singleton]):
            singleton.reset()
        self._components.reset()

    def _effective(self) -> list[providers.Resource[Any]]:
        # What a test's override put in place of each resource, if anything.
        found: list[providers.Resource[Any]] = []
        for declared in self._resources:
            provider: providers.Provider[Any] | None = declared
            while provider is not None and provider.overridden:
                provider = provider.last_overriding
            if isinstance(provider, providers.Resource):
                found.append(provider)
        return found


async def _init(resource: providers.Resource[Any]) -> None:
    result = resource.init()
    if inspect.isawaitable(result):
        await result


async def _shutdown(resource: providers.Resource[Any]) -> None:
    result = resource.shutdown()
    if inspect.isawaitable(result):
        await result


class Container(containers.DeclarativeContainer):
    """
    Lake's providers. Build with ``create_container(settings)``.
    """

    config = providers.Configuration(strict=True)

    # OpenTelemetry: tracer is None while tracing.enabled is false (the exporter and
    # processor are then never built). Tests override span_processor.
    span_exporter = providers.Singleton(
        otel.span_exporter, config.tracing.exporter, config.tracing.endpoint
    )
    span_processor = providers.Singleton(otel.batch_processor, span_exporter)
    tracing = providers.Singleton(
        otel.open_tracing,
        enabled=config.tracing.enabled,
        service_name=providers.Callable(
            otel.service_name_of, config.tracing.service_name, config.service_name
        ),
        sample_ratio=config.tracing.sample_ratio,
        processor=span_processor.provider,
    )
    tracer = tracing.provided.tracer

    cache_lease = providers.Callable(operator.truediv, config.cache.lease_ms, 1000)
    # Waiters, waits, holds and new connections of the PostgreSQL pool.
    pool_metrics = providers.Singleton(PoolMetrics)
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
        metrics=pool_metrics,
        pgbouncer=config.postgres.pgbouncer,
    )
    redis = providers.Resource(
        open_redis,
        url=config.redis.url,
        mode=config.redis.mode,
        password=config.redis.password,
        sentinel_master=config.redis.sentinel_master,
        sentinel_password=config.redis.sentinel_password,
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

    # Per dependency: a circuit breaker, a retry budget, adaptive timeouts.
    protection = providers.Singleton(
        Protection,
        breaker=providers.Factory(
            BreakerSettings,
            window_s=config.protection.breaker.window_s,
            min_calls=config.protection.breaker.min_calls,
            failure_rate=config.protection.breaker.failure_rate,
            slow_call_rate=config.protection.breaker.slow_call_rate,
            slow_call_s=config.protection.breaker.slow_call_s,
            open_wait_s=config.protection.breaker.open_wait_s,
            half_open_calls=config.protection.breaker.half_open_calls,
            max_half_open_s=config.protection.breaker.max_half_open_s,
        ),
        redis_breaker=providers.Factory(
            BreakerSettings,
            min_calls=5,
            half_open_calls=1,
            open_wait_s=config.cache.cooldown_s,
        ),
        budget=providers.Factory(
            BudgetSettings,
            ratio=config.protection.retry_budget.ratio,
            min_per_s=config.protection.retry_budget.min_per_s,
            ttl_s=config.protection.retry_budget.ttl_s,
        ),
        timeouts=providers.Factory(
            TimeoutSettings,
            ceiling_s=config.operations.timeout,
            multiplier=config.protection.timeouts.multiplier,
            floor_s=config.protection.timeouts.floor_s,
            samples=config.protection.timeouts.samples,
        ),
        peer_ceiling_s=config.mesh.call_timeout,
        adaptive=config.protection.timeouts.enabled,
    )
    mesh_client = providers.Resource(
        open_mesh,
        peers=config.mesh.peers,
        call_timeout=config.mesh.call_timeout,
        tls=config.mesh.tls,
        protection=protection,
        tracer=tracer,
    )

    # With read replicas: per scope, the WAL position a replica must have replayed
    # for a read to see its writes (fed by the version batches).
    fences = providers.Singleton(FenceBook)
    # Cache versions, read in batches on a connection of their own.
    # With a lease, polled for changes, so that most cached reads ask nothing.
    versions = providers.Resource(
        open_version_reader,
        providers.Callable(
            pg_connector,
            dsn=config.postgres.dsn,
            password=config.postgres.password,
            connect_timeout=config.postgres.connect_timeout,
            statement_timeout_ms=config.postgres.statement_timeout_ms,
            application_name=providers.Callable(lease_app_name, cache_lease),
            pgbouncer=config.postgres.pgbouncer,
        ),
        lease=cache_lease,
        # Behind PgBouncer the other instances' connections cannot be counted:
        # every write then waits the lease.
        blind=config.postgres.pgbouncer,
        poll=providers.Callable(operator.truediv, config.cache.poll_ms, 1000),
        fences=providers.Callable(_fences_for, config.postgres.replica_dsns, fences),
    )
    # Read replicas (None without postgres.replica_dsns): a small pool and a
    # breaker each, checked in the background.
    replicas = providers.Resource(
        open_replicas,
        dsns=config.postgres.replica_dsns,
        primary_dsn=config.postgres.dsn,
        password=config.postgres.password,
        max_size=config.postgres.replica_max_size,
        connect_timeout=config.postgres.connect_timeout,
        acquire_timeout=config.postgres.acquire_timeout,
        statement_timeout_ms=config.postgres.statement_timeout_ms,
        idle_in_transaction_timeout_ms=config.postgres.idle_in_transaction_timeout_ms,
        max_inactive_connection_lifetime=config.postgres.max_inactive_connection_lifetime,
        max_lag=config.postgres.max_replica_lag,
        interval=config.postgres.replica_check_interval,
        check_timeout=config.health.check_timeout,
        protection=protection,
        pgbouncer=config.postgres.pgbouncer,
    )
    # The pool's fair shares between tenants (a bulkhead of the pool's size).
    pg_gate = providers.Singleton(
        FairGate,
        providers.Factory(
            GateSettings,
            capacity=config.postgres.max_size,
            share=config.protection.fair_share.share,
            max_queue_per_tenant=config.protection.fair_share.max_queue_per_tenant,
            wait_s=config.postgres.acquire_timeout,
            by_time=config.protection.fair_share.by_time,
        ),
    )
    database = providers.Singleton(
        Database,
        pg_pool,
        acquire_timeout=config.postgres.acquire_timeout,
        versions=versions,
        guard=protection.provided.postgres,
        gate=pg_gate,
        pool_metrics=pool_metrics,
        tracer=tracer,
    )
    # The event loop's lag: health shows it, and a Redis timeout while the loop
    # itself stalled is not held against Redis.
    loop_lag = providers.Singleton(
        LoopLag, threshold_ms=config.health.loop_lag_threshold_ms
    )
    cache = providers.Singleton(
        RedisCache,
        redis,
        timeout=config.cache.timeout,
        ttl_s=config.cache.ttl_s,
        breaker=protection.provided.redis.breaker,
        loop_lag=loop_lag,
        tracer=tracer,
    )
    # Change events are recorded (outbox) only when a stream peer is configured.
    events = providers.Callable(_has_stream, config.mesh.peers)
    # Quotas in force: the settings' defaults, the overrides of `lake quota set`.
    quota_book = providers.Singleton(QuotaBook, config.quotas.default)
    caps = quota_book.provided.caps
    vectors = providers.Singleton(
        PgVectorStore,
        database,
        default_ef_search=config.vectors.ef_search,
        events=events,
        caps=caps,
    )
    series = providers.Singleton(
        PgTimeSeriesStore,
        database,
        retention_days=config.timeseries.retention_days,
        future_days=config.timeseries.future_days,
        cursor_key=config.timeseries.cursor_key,
        events=events,
        caps=caps,
    )
    spatial = providers.Singleton(PgSpatialStore, database, events=events, caps=caps)
    migrator = providers.Singleton(Migrator, database)
    # API tokens managed at run time; the server reads them once serving.
    tokens = providers.Singleton(PgTokenStore, database)
    # Metered usage, flushed by every instance (resolved once the resources are open).
    usage_store = providers.Singleton(PgUsageStore, database)
    relay = providers.Singleton(
        OutboxRelay,
        database,
        mesh_client,
        enabled=events,
        batch=config.events.batch,
        retention_days=config.events.retention_days,
    )

    # The read cache: keys, versions and the per-route policy, in one component;
    # with replicas, its loads routed to one that has replayed the read's writes.
    reads = providers.Singleton(
        routed_reads,
        providers.Singleton(CachedReads, cache, database),
        database,
        replicas,
        fences,
    )
    # Rate quotas in Redis (Lake's own pool), overrides and usage in PostgreSQL.
    quota_store = providers.Singleton(PgQuotaStore, database)
    quotas = providers.Singleton(
        RateQuotas,
        quota_book,
        redis,
        quota_store,
        strategy=config.quotas.strategy,
        window_s=config.quotas.window_s,
        cooldown_s=config.quotas.cooldown_s,
        refresh_s=config.quotas.refresh_s,
        lease=config.quotas.lease,
    )

    components = providers.Singleton(
        Components,
        database=database,
        cache=cache,
        reads=reads,
        vectors=vectors,
        series=series,
        spatial=spatial,
        mesh=mesh_client,
        migrator=migrator,
        relay=relay,
        quotas=quotas,
        replicas=replicas,
    )

    resources = providers.Singleton(
        ProviderResources,
        resources=providers.List(
            pg_pool.provider,
            versions.provider,
            replicas.provider,
            redis.provider,
            mesh_client.provider,
        ),
        components=components.provider,
    )
    usage = providers.Singleton(Usage)
    operation_metrics = providers.Singleton(
        OperationMetrics, config.metrics.tenant_labels
    )

    limits = providers.Singleton(
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
    )
    # Retry policies: opening the resources, and transient failures of operations.
    startup_policy = providers.Singleton(
        RetryPolicy,
        attempts=config.startup.attempts,
        timeout=config.startup.timeout,
        wait_initial=config.startup.wait_initial,
        wait_max=config.startup.wait_max,
    )
    operation_policy = providers.Singleton(
        RetryPolicy,
        attempts=config.operations.attempts,
        timeout=config.operations.timeout,
    )

    # Calls refused by a tenant's quota, by quota (counted by the manager).
    quota_rejections = providers.Singleton(QuotaRejections)
    manager = providers.Singleton(
        ServiceManager,
        resources=resources,
        limits=limits,
        startup=startup_policy,
        operations=operation_policy,
        operation_timeout=config.operations.timeout,
        attempt_timeout=config.startup.attempt_timeout,
        check_timeout=config.health.check_timeout,
        grace=config.grpc.grace,
        loop_lag=loop_lag,
        usage=usage,
        protection=protection,
        metrics=operation_metrics,
        quota_rejections=quota_rejections,
        tracer=tracer,
    )

    # --- Prometheus metrics: figures read when scraped (see lake/metrics.py) --------
    # Add a provider of an object with collect() here for more families.
    metrics_sources = providers.List(
        operation_metrics,
        pool_metrics,
        quota_rejections,
        providers.Singleton(CacheSource, manager),
        providers.Singleton(EventsSource, manager),
        providers.Singleton(ReplicaSource, manager),
        providers.Singleton(LoopLagSource, loop_lag),
        providers.Singleton(ProtectionSource, protection, pg_gate),
        providers.Singleton(process_source),
    )

    # --- the gRPC face -----------------------------------------------------------
    # Budgets per call class, shared by the admission guard and GetStatus.
    admission = providers.Singleton(
        Admission,
        max_api_calls=config.grpc.max_concurrent_rpcs,
        max_open_streams=config.grpc.max_open_streams,
        max_streams_per_peer=config.grpc.max_streams_per_peer,
    )
    # Settings tokens; the server hands it the token table once serving.
    # Expects the token table: until it is read, unknown tokens are "starting".
    keyring = providers.Singleton(Keyring, config.auth.tokens, expect_table=True)
    auth_failures = providers.Singleton(
        FailureLimiter,
        max_failures=config.auth.max_failures,
        window_s=config.auth.failure_window_s,
    )
    admission_guard = providers.Singleton(AdmissionInterceptor, admission)
    auth = providers.Singleton(
        AuthInterceptor,
        keyring,
        max_deadline=config.grpc.max_deadline_s,
        enabled=config.auth.enabled,
        limiter=auth_failures,
    )
    decode_guard = providers.Singleton(DecodeGuard)
    # Usage metering: counted in memory per call, flushed to PostgreSQL.
    meter = providers.Singleton(Meter, max_rows=config.usage.max_rows)
    metering = providers.Singleton(
        MeteringInterceptor, meter, enabled=config.usage.enabled
    )
    usage_flusher = providers.Singleton(
        UsageFlusher,
        meter,
        usage_store.provider,
        manager,
        interval=config.usage.flush_interval,
        timeout=config.usage.flush_timeout,
    )
    usage_api = providers.Singleton(UsageServicer, usage_store.provider, usage_flusher)
    # Admission first: a call refused for want of a slot costs nothing more.
    # Metering after auth (the tenant is known), before decoding (message sizes).
    # Tracing (when on) first: its span covers the others' work.
    layers = providers.Callable(
        _traced,
        providers.List(admission_guard, auth, metering, decode_guard),
        tracer,
    )
    # All of them as one interceptor: grpc.aio runs each interceptor of its list
    # on every call, a chain wraps each method's handler once.
    interceptors = providers.Singleton(chained, layers)
    server_credentials = providers.Singleton(grpc_server_credentials, config.grpc.tls)
    # Worker processes share their figures here; GetStatus adds them up.
    status_board = providers.Singleton(
        StatusBoard,
        directory=config.process.status_dir,
        index=config.process.index,
        count=config.process.count,
    )
    metrics = providers.Singleton(MetricsRegistry, metrics_sources, board=status_board)
    metrics_server = providers.Singleton(
        MetricsServer,
        metrics,
        address=providers.Callable(
            _metrics_address, config.metrics.address, config.process.index
        ),
    )
    server = providers.Singleton(
        LakeServer,
        manager,
        address=config.grpc.address,
        admission=admission,
        keyring=keyring,
        interceptors=interceptors,
        credentials=server_credentials,
        interval=config.health.interval,
        max_message_bytes=config.grpc.max_message_bytes,
        reflection_enabled=config.grpc.reflection,
        max_connection_age=config.grpc.max_connection_age_s,
        drain=config.grpc.drain_s,
        max_streams_per_connection=config.grpc.max_streams_per_connection,
        stream_idle_timeout=config.grpc.stream_idle_timeout_s,
        token_refresh=config.auth.refresh_s,
        # Worker processes of one `lake serve` share the port; one alone never does.
        reuse_port=providers.Callable(operator.gt, config.process.count, 1),
        status_board=status_board,
        usage=usage_api,
        quotas=providers.Callable(
            _quota_admin, manager, quotas.provider, quota_store.provider
        ),
    )

    # --- background workers and the whole ------------------------------------------
    upkeep = providers.Singleton(
        UpkeepWorker, manager, interval=config.timeseries.maintenance_interval
    )
    relay_worker = providers.Singleton(
        RelayWorker, manager, interval=config.events.interval
    )
    status_publisher = providers.Singleton(
        StatusPublisher, status_board, server.provided.status_report
    )
    metrics_publisher = providers.Singleton(MetricsPublisher, status_board, metrics)
    server_workers = providers.Callable(
        select_workers,
        upkeep,
        relay_worker,
        relay_enabled=events,
        owner=providers.Callable(operator.eq, config.process.index, 0),
        publisher=status_publisher,
        publishing=providers.Callable(operator.gt, config.process.count, 1),
        usage=usage_flusher,
    )
    # Worker processes other than 0 hand their metrics to worker 0's listener.
    workers = providers.Callable(
        _plus,
        server_workers,
        metrics_publisher,
        wanted=providers.Callable(operator.gt, config.process.index, 0),
    )
    lake = providers.Singleton(
        Lake,
        manager,
        server=server,
        tokens=tokens.provider,
        workers=workers,
        grace=config.grpc.grace,
        profile=config.profile,
        metrics=metrics_server,
        drains=providers.List(usage_flusher, tracing),
    )
    # ``lake migrate``: start-up (which migrates) and stop, with nothing served.
    migration = providers.Singleton(Lake, manager)


def create_container(settings: dict[str, Any]) -> Container:
    """
    Build a container from validated settings (see ``lake.config.load_settings``).
    """
    container = Container()
    # Which of `lake serve`'s worker processes this is (set by the parent).
    settings = {"process": {"index": 0, "count": 1, "status_dir": ""}, **settings}
    container.config.from_dict(settings, required=True)
    # Per instance: a class-level call is lost, and without it a plain-object
    # override would make init and shutdown synchronous.
    for resource in (
        container.pg_pool,
        container.versions,
        container.replicas,
        container.redis,
        container.mesh_client,
    ):
        resource.enable_async_mode()
    container.components.enable_async_mode()
    return container


async def aresolve(provider: providers.Provider[T]) -> T:
    """
    Call ``provider`` and await the result when it is awaitable.
    """
    result: object = provider()
    if inspect.isawaitable(result):
        result = await result
    return cast(T, result)
