"""
ServiceManager: coordinates the injected components; opens no connection itself.

Lifecycle::

    NEW --start()--> STARTING --ok--> RUNNING --stop()--> STOPPING --> STOPPED
                         └--------failed (resources closed)------------^

``start()`` and ``stop()`` are idempotent; anything else out of turn raises
``LifecycleError`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, overload

import structlog

from lake import deadline
from lake.errors import (
    AbortedError,
    ConflictError,
    DeadlineExceededError,
    LakeError,
    LifecycleError,
    NotFoundError,
    QuotaExceededError,
    ResourceExhaustedError,
    StoreUnavailableError,
    TransientError,
    UnsupportedError,
    ValidationError,
)
from lake.health import (
    Check,
    ComponentHealth,
    HealthReport,
    Status,
    aggregate,
    run_checks,
)
from lake.lag import LoopLag
from lake.logs import operation_context
from lake.models import (
    Bucket,
    Collection,
    FeatureMatch,
    Limits,
    MaintenanceReport,
    PointPage,
    RelayReport,
    ServiceStatus,
    VectorMatch,
)
from lake.offload import run_heavy
from lake.opclasses import OPERATION_CLASSES
from lake.operations import (
    AggregatePoints,
    CreateCollection,
    DeleteVectors,
    FeaturesInBox,
    FeaturesInPolygon,
    FeaturesNearby,
    FeaturesNearest,
    Operation,
    QueryPoints,
    SearchText,
    SearchVectors,
    UpsertFeatures,
    UpsertTexts,
    UpsertVectors,
    WritePoints,
    WritePointsMany,
)
from lake.opmetrics import OperationMetrics, QuotaRejections
from lake.ports import MISS, Components, ResourceSet
from lake.protection import Protection
from lake.resilience import RetryPolicy, is_transient
from lake.routes import ROUTES, Route
from lake.tracing import failed, operation_span
from lake.usage import OperationStats, Usage

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["ServiceManager", "State"]

log = structlog.get_logger(__name__)


class State(enum.Enum):
    """
    Where the manager is in its lifecycle.
    """

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ServiceManager:
    """
    Starts, checks, routes to and stops the components it is given.

    Args:
        resources: opens the resources and yields the components over them.
        limits: caps that every operation is validated against.
        startup: bounded retries for opening resources and migrating.
        operations: bounded retries for transient failures of idempotent operations.
        attempt_timeout: time box of one start-up attempt, in seconds.
        check_timeout: time box of each health check, in seconds.
        grace: seconds that closing the resources may take.
        loop_lag: samples the event loop's lag while running; health shows it and
            does not blame a dependency for a check the loop was too busy to hear.
        usage: counts calls, failures and latency per operation kind.
        protection: breakers, retry budgets and adaptive timeouts per dependency.
        quota_rejections: counts the calls a tenant's quota refused, by quota.
        metrics: counts calls by status code and their durations (Prometheus).
        tracer: makes a span per operation (None: tracing is off).
    """

    def __init__(
        self,
        resources: ResourceSet,
        *,
        limits: Limits,
        startup: RetryPolicy,
        operations: RetryPolicy,
        attempt_timeout: float = 10.0,
        check_timeout: float = 1.0,
        grace: float = 5.0,
        operation_timeout: float = 30.0,
        loop_lag: LoopLag | None = None,
        usage: Usage | None = None,
        protection: Protection | None = None,
        quota_rejections: QuotaRejections | None = None,
        metrics: OperationMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._resources = resources
        self._limits = limits
        self._startup = startup
        self._operations = operations
        self._attempt_timeout = attempt_timeout
        self._check_timeout = check_timeout
        self._grace = grace
        self._operation_timeout = operation_timeout
        self._loop_lag = loop_lag
        self._state = State.NEW
        self._lock = asyncio.Lock()
        self._components: Components | None = None
        self._health_run: asyncio.Future[HealthReport] | None = None
        self._usage = usage or Usage()
        self._metrics = metrics or OperationMetrics()
        self._routes = ROUTES
        self._protection = protection or Protection()
        self._quota_rejections = quota_rejections
        self._tracer = tracer
        # Reads get adaptive attempt timeouts; a write cut by a guessed timeout
        # would be retried at full cost, so writes have the caller's deadline.
        self._adaptive = {t for t, r in ROUTES.items() if r.scope is not None}
        self._adaptive.add(SearchText)

    @property
    def limits(self) -> Limits:
        """
        The caps every operation is validated against (the API checks counts early).
        """
        return self._limits

    @property
    def stats(self) -> dict[str, OperationStats]:
        """
        Usage so far, per operation kind.
        """
        return self._usage.operations

    @property
    def components(self) -> Components | None:
        """
        The running components (None unless running), for read-only figures.
        """
        return self._components if self._state is State.RUNNING else None

    @property
    def state(self) -> State:
        """
        The current lifecycle state.
        """
        return self._state

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """
        Open the resources and migrate, with bounded retries; idempotent.

        Raises:
            LifecycleError: start-up failed (everything opened is closed again), or the
                manager was already stopped.
        """
        async with self._lock:
            if self._state is State.RUNNING:
                return
            if self._state is not State.NEW:
                msg = f"cannot start a manager that is {self._state.value}"
                raise LifecycleError(msg)
            self._state = State.STARTING
            started = time.perf_counter()
            try:
                # Each failed attempt closes what it opened, once; nothing is
                # left to close here.
                self._components = await self._startup.run(self._open_once)
            except BaseException as exc:
                self._state = State.STOPPED
                if isinstance(exc, Exception):
                    msg = f"start-up failed: {_describe(exc)}"
                    raise LifecycleError(msg) from None
                raise
            self._state = State.RUNNING
            if self._loop_lag is not None:
                self._loop_lag.start()
            log.info("lake_started", took_s=round(time.perf_counter() - started, 3))

    async def _open_once(self) -> Components:
        try:
            async with asyncio.timeout(self._attempt_timeout):
                components = await self._resources.open()
                await components.migrator.migrate()
                await components.series.maintain()  # partitions ahead of the data
        except BaseException:
            # Close what this attempt opened before the next one (or the end).
            await self._close_quietly()
            raise
        return components

    async def _close_quietly(self) -> None:
        try:
            async with asyncio.timeout(self._grace):
                await self._resources.close()
        except Exception as exc:
            log.warning("resource_close_failed", error=_describe(exc))

    async def stop(self) -> None:
        """
        Close the resources in reverse dependency order within the grace; idempotent.
        """
        async with self._lock:
            if self._state in (State.STOPPED, State.STOPPING):
                return
            was = self._state
            self._state = State.STOPPING
            if self._loop_lag is not None:
                await self._loop_lag.stop()
            await self._protection.watch.aclose()
            await self._end_health_run()
            if was is State.RUNNING:
                if self._components is not None:
                    await self._components.cache.drain()
                    await self._components.database.drain()
                await self._close_quietly()
            self._components = None
            self._state = State.STOPPED
            log.info("lake_stopped")

    async def _end_health_run(self) -> None:
        # A health run is shielded from its callers' cancellation: one still
        # probing would ping Redis or PostgreSQL after they closed, opening a
        # connection nobody closes. It ends before they do.
        run, self._health_run = self._health_run, None
        if run is not None and not run.done():
            run.cancel()
            await asyncio.wait([run])

    def _running(self) -> Components:
        if self._state is not State.RUNNING or self._components is None:
            msg = f"lake is {self._state.value}, not running"
            raise LifecycleError(msg)
        return self._components

    # --- health ---------------------------------------------------------------------

    async def health(self) -> HealthReport:
        """
        Check every component concurrently, each time-boxed, and aggregate.

        Concurrent callers share one run, so a dependency sees one probe at a time.
        """
        if self._state is not State.RUNNING or self._components is None:
            reason = self._state.value
            lake = ComponentHealth("lake", Status.DOWN, 0.0, reason, critical=True)
            return aggregate([lake])
        if self._health_run is None or self._health_run.done():
            checks = self._checks(self._components)
            self._health_run = asyncio.ensure_future(
                run_checks(checks, self._check_timeout, self._loop_lag)
            )
        return await asyncio.shield(self._health_run)

    def _checks(self, c: Components) -> list[Check]:
        checks = [
            Check("postgres", c.database.ping, critical=True),
            Check("redis", c.cache.ping, critical=False),
            Check("timeseries", c.series.ping, critical=True),
            Check("spatial", c.spatial.ping, critical=True),
            # A server without pgvector still serves time series and features.
            Check("vectors", c.vectors.ping, critical=False),
        ]
        if c.quotas is not None:  # "quotas local": Redis lost, counted per instance
            checks.append(Check("quotas", c.quotas.ping, critical=False))
        if c.replicas is not None:
            # A replica out of rotation degrades Lake: its reads go to the primary.
            # Its latency column is its measured lag.
            checks += [
                Check(
                    f"postgres.replica.{name}",
                    partial(c.replicas.ping, name),
                    critical=False,
                    failure=Status.DEGRADED,
                    measure=partial(c.replicas.lag_ms, name),
                )
                for name in c.replicas.names
            ]
        # A missing peer degrades Lake: only the operations that need it fail.
        checks += [
            Check(
                f"mesh.{peer}",
                partial(c.mesh.ping, peer),
                critical=False,
                failure=Status.DEGRADED,
            )
            for peer in c.mesh.peers
        ]
        lag = self._loop_lag
        if lag is not None:
            # Lake's own loop: slow means every answer is late, not that any
            # dependency is sick.
            checks.append(
                Check(
                    "event_loop",
                    lag.probe,
                    critical=False,
                    failure=Status.DEGRADED,
                    measure=lag.worst_ms,
                )
            )
        return checks

    # --- operations -----------------------------------------------------------------

    @overload
    async def coordinate(
        self,
        operation: UpsertVectors
        | UpsertTexts
        | DeleteVectors
        | WritePoints
        | WritePointsMany
        | UpsertFeatures,
    ) -> int: ...
    @overload
    async def coordinate(self, operation: CreateCollection) -> Collection: ...
    @overload
    async def coordinate(
        self, operation: SearchVectors | SearchText
    ) -> list[VectorMatch]: ...
    @overload
    async def coordinate(self, operation: QueryPoints) -> PointPage: ...
    @overload
    async def coordinate(self, operation: AggregatePoints) -> list[Bucket]: ...
    @overload
    async def coordinate(
        self,
        operation: FeaturesNearby | FeaturesNearest | FeaturesInBox | FeaturesInPolygon,
    ) -> list[FeatureMatch]: ...

    async def coordinate(self, operation: Operation) -> object:
        """
        Validate ``operation``, route it to its component and return the result.

        Reads go through the cache, keyed on the generation of their scope. Transient
        failures are retried within the operation policy (every operation here is
        idempotent: upserts and deletes by id, reads).

        Raises:
            ValidationError: unknown operation or bad input, naming the field.
            LifecycleError: the manager is not running.
            LakeError: the component failed; its subclass says how.
        """
        route = self._routes.get(type(operation))
        if route is None:
            problem = f"unknown operation {type(operation).__name__}"
            raise ValidationError(field="operation", problem=problem)
        c = self._running()
        # Checking a million vector values takes ~150 ms: big operations are
        # checked on the worker thread, so the event loop keeps serving meanwhile.
        await run_heavy(partial(operation.validate, self._limits), _weight(operation))
        name = type(operation).__name__
        failure: str | None = None
        started = time.perf_counter()
        # A read whose answer this process holds at the version its lease knows:
        # answered now, with no retry, timeout or log context to set up (nothing
        # here waits but the quota, and nothing here logs). Traced calls take the
        # full path, which makes their spans.
        held = MISS
        if route.scope is not None and self._tracer is None:
            held = c.reads.peek(operation.tenant, route.scope(operation), operation)
        try:
            if held is not MISS:
                await self._admit(operation)
                self._protection.postgres.breaker.check()  # as on the full path
                return held
            with (
                operation_context(tenant=operation.tenant, operation=name),
                operation_span(self._tracer, name, operation.tenant) as span,
            ):
                try:
                    await self._admit(operation)  # quotas: validated, before the pool
                    return await self._bounded(route, operation)
                except BaseException as exc:
                    failed(span, _kind(exc))
                    raise
        except BaseException as exc:
            failure = _kind(exc)
            if isinstance(exc, QuotaExceededError) and self._quota_rejections:
                self._quota_rejections.rejected(exc.quota)
            raise
        finally:
            took = time.perf_counter() - started
            self._usage.record(name, took * 1000.0, failure)
            self._metrics.record(name, operation.tenant, took, failure)

    async def _admit(self, op: Operation) -> None:
        quotas = self._running().quotas
        if quotas is not None:
            await quotas.admit(op.tenant, OPERATION_CLASSES[type(op)])

    async def _bounded(self, route: Route, op: Any) -> object:
        # One bound for the whole operation, retries included: the caller's deadline
        # or operations.timeout; stores pass what remains on to PostgreSQL.
        # Every operation needs PostgreSQL (a cached read its version): while its
        # breaker is open, answer at once, before the cache or a peer is asked.
        self._protection.postgres.breaker.check()
        left = deadline.remaining()
        budget = self._operation_timeout if left is None else left
        policy = self._operations.within(budget)
        attempt = partial(self._dispatch, route, op)
        try:
            with deadline.deadline_scope(budget):
                async with asyncio.timeout(budget):
                    on = partial(self._retryable, type(op).__name__)
                    return await policy.run(attempt, on=on)
        except TimeoutError:
            msg = "deadline exceeded"
            raise DeadlineExceededError(msg) from None

    def _retryable(self, kind: str, exc: Exception) -> bool:
        # Transient, and the failed dependency's retry budget holds one more, and
        # the caller's time holds another attempt (the operation's p99, or 10 ms).
        if not is_transient(exc):
            return False
        left = deadline.remaining()
        if left is not None:
            expected = self._protection.postgres.timeouts(kind).p99 or 0.01
            if left < expected:
                return False
        return self._protection.may_retry(exc)

    async def _timed(self, load: Callable[[], Awaitable[object]], kind: str) -> object:
        # A read's load bounded by its adaptive timeout (clamp(k x p99)), within
        # the caller's deadline; cut by it, it failed for the dependency and may be
        # retried. PostgreSQL's statement timeout follows (it is what remains). Only
        # the load: a cache hit pays nothing for it.
        tracker = self._protection.postgres.timeouts(kind)
        left = deadline.remaining()
        limit = tracker.timeout(left)
        started = time.perf_counter()
        if left is not None and limit >= left:
            # The caller's deadline governs (so does the ceiling while warming up).
            result = await load()
            tracker.record(time.perf_counter() - started)
            return result
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cut
            return await load()
        watch = self._protection.watch
        watch.arm(task, asyncio.get_running_loop().time() + limit)
        tokens = deadline.enter_attempt(limit)
        try:
            result = await load()
        except asyncio.CancelledError:
            if not watch.disarm(task):
                raise
            tracker.timed_out(limit)
            msg = "database did not answer in time"
            detail = f"attempt timeout {limit * 1000:.0f} ms"
            raise StoreUnavailableError(msg).with_detail(detail) from None
        finally:
            watch.disarm(task)
            deadline.exit_attempt(tokens)
        tracker.record(time.perf_counter() - started)
        return result

    async def _dispatch(self, route: Route, op: Any) -> object:
        c = self._running()
        load: Callable[[], Awaitable[object]] = partial(route.handler, c, op)
        if self._protection.adaptive and type(op) in self._adaptive:
            load = partial(self._timed, load, type(op).__name__)
        if route.scope is None:
            return await load()
        if route.codec is None:  # a read the cache does not keep (SearchText)
            return await c.reads.uncached(op.tenant, route.scope(op), load)
        return await c.reads.read(op.tenant, route.scope(op), op, load, route.codec)

    async def maintain(self) -> MaintenanceReport:
        """
        Run periodic store upkeep: time-series partitions ahead, expired ones
        dropped, delivered outbox events purged.
        """
        c = self._running()
        try:
            async with asyncio.timeout(self._operation_timeout * 4):  # DDL may queue
                report = await c.series.maintain()
                await c.relay.purge()
        except TimeoutError:
            msg = "upkeep did not finish in time"
            raise DeadlineExceededError(msg) from None
        return report

    async def deliver_events(self) -> RelayReport:
        """
        Deliver pending change events to the stream peer (one relay round).
        """
        relay = self._running().relay
        try:
            async with asyncio.timeout(self._operation_timeout):
                return await relay.run_once()
        except TimeoutError:
            msg = "event delivery did not finish in time"
            raise DeadlineExceededError(msg) from None

    async def status(self) -> ServiceStatus:
        """
        State, per-operation usage, pool and cache figures and the event backlog,
        for operators. Holds no tenant data.
        """
        c = self._components
        operations = self._usage.report()
        if self._state is not State.RUNNING or c is None:
            return ServiceStatus(self._state.value, operations)
        pending: int | str
        try:
            pending = await c.relay.backlog()
        except LakeError as exc:
            pending = f"unknown ({exc})"
        return ServiceStatus(
            self._state.value,
            operations,
            pool=c.database.metrics(),
            cache={**c.cache.stats(), "versions": c.database.version_stats()},
            events_pending=pending,
            protection=self._protection.snapshot(),
            replicas=None if c.replicas is None else c.replicas.stats(),
        )


def _weight(op: Operation) -> int:
    """
    About how many values validating ``op`` visits (0 for the small ones).
    """
    if isinstance(op, UpsertVectors):
        return sum(len(item.vector) for item in op.items)
    if isinstance(op, WritePointsMany):
        return sum(len(w.points) for w in op.writes) * 2
    if isinstance(op, WritePoints):
        return len(op.points) * 2
    if isinstance(op, UpsertFeatures):
        return len(op.features) * 20
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LakeError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"unexpected {type(exc).__name__}"


# Failures are counted by kind, never by exception class name: status output goes
# to operators' tools, and class names are internals.
_FAILURE_KINDS: list[tuple[type[LakeError], str]] = [
    (ValidationError, "invalid_argument"),
    (NotFoundError, "not_found"),
    (ConflictError, "conflict"),
    (AbortedError, "aborted"),
    (UnsupportedError, "unsupported"),
    (DeadlineExceededError, "deadline_exceeded"),
    (ResourceExhaustedError, "resource_exhausted"),
    (TransientError, "unavailable"),
    (LifecycleError, "unavailable"),
]


def _kind(exc: BaseException) -> str:
    # A Lake error by its kind; the caller leaving; anything else is a bug.
    if isinstance(exc, LakeError):
        return _failure_kind(exc)
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal"


def _failure_kind(exc: LakeError) -> str:
    for kind, name in _FAILURE_KINDS:
        if isinstance(exc, kind):
            return name
    return "internal"
