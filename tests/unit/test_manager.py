"""
ServiceManager with fake components passed straight to its constructor.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from lake.errors import (
    CircuitOpenError,
    LifecycleError,
    QuotaExceededError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
)
from lake.health import Status
from lake.manager import ServiceManager, State
from lake.operations import (
    Feature,
    FeaturesNearby,
    Limits,
    Point,
    QueryPoints,
    SearchVectors,
    UpsertFeatures,
    UpsertVectors,
    VectorItem,
    WritePoints,
)
from lake.opmetrics import QuotaRejections
from lake.protection import (
    BreakerSettings,
    BudgetSettings,
    Outcome,
    Protection,
    TimeoutSettings,
)
from lake.resilience import RetryPolicy
from tests.fakes import FakeMesh, FakeQuotas, FakeResourceSet, Fakes


def make_manager(resources: FakeResourceSet | None = None) -> ServiceManager:
    return ServiceManager(
        resources or FakeResourceSet(),
        limits=Limits(max_batch=100, max_top_k=100),
        startup=RetryPolicy(attempts=3, timeout=5.0),
        operations=RetryPolicy(attempts=3, timeout=5.0),
        check_timeout=0.2,
    )


async def test_start_and_stop_are_idempotent():
    """Starting twice opens once; stopping twice closes once."""
    resources = FakeResourceSet()
    manager = make_manager(resources)
    await manager.start()
    await manager.start()
    assert manager.state is State.RUNNING
    assert resources.opens == 1
    await manager.stop()
    await manager.stop()
    assert manager.state is State.STOPPED
    assert resources.closes == 1


async def test_concurrent_starts_open_once():
    """Two start() calls racing share one start-up."""
    resources = FakeResourceSet()
    manager = make_manager(resources)
    await asyncio.gather(manager.start(), manager.start())
    assert resources.opens == 1


async def test_start_after_stop_is_a_lifecycle_error():
    """A stopped manager cannot be started again."""
    manager = make_manager()
    await manager.start()
    await manager.stop()
    with pytest.raises(LifecycleError, match="stopped"):
        await manager.start()


async def test_stop_before_start_closes_nothing():
    """Stopping a manager that never started is a no-op that ends in STOPPED."""
    resources = FakeResourceSet()
    manager = make_manager(resources)
    await manager.stop()
    assert manager.state is State.STOPPED
    assert resources.closes == 0


async def test_operation_before_start_is_a_lifecycle_error():
    """Routing before start raises instead of hanging."""
    manager = make_manager()
    op = SearchVectors(tenant="a", collection="docs", vector=[1.0], k=1)
    with pytest.raises(LifecycleError, match="new"):
        await manager.coordinate(op)


async def test_transient_start_failures_are_retried_and_cleaned_up():
    """Two transient failures, then success: three opens, every failure closed."""
    resources = FakeResourceSet()
    resources.failures = [StoreUnavailableError("down"), OSError("refused")]
    manager = make_manager(resources)
    await manager.start()
    assert manager.state is State.RUNNING
    assert resources.opens == 3
    assert resources.closes == 2


async def test_permanent_start_failure_is_not_retried():
    """A non-transient failure ends start-up at once with one clear error."""
    resources = FakeResourceSet()
    resources.failures = [StoreError("database rejected the credentials")]
    manager = make_manager(resources)
    with pytest.raises(LifecycleError, match="start-up failed: database rejected"):
        await manager.start()
    assert resources.opens == 1
    assert not resources.open_now
    assert resources.closes == 1  # closed once, not once per layer
    assert manager.state is State.STOPPED


async def test_start_that_keeps_failing_gives_up_within_bounds():
    """Retries are bounded by attempts; the last error is reported; nothing is open."""
    resources = FakeResourceSet()
    resources.failures = [StoreUnavailableError("database refused the connection")] * 5
    manager = make_manager(resources)
    with pytest.raises(LifecycleError, match="refused the connection"):
        await manager.start()
    assert resources.opens == 3
    assert not resources.open_now


async def test_failed_migration_closes_what_was_opened():
    """A migration failure after the resources opened leaves none open."""
    fakes = Fakes()
    fakes.migrator.fail = StoreError("migration 0002 was edited")
    resources = FakeResourceSet(fakes.components())
    manager = make_manager(resources)
    with pytest.raises(LifecycleError, match="edited"):
        await manager.start()
    assert not resources.open_now


async def test_cancelled_start_closes_resources():
    """Cancelling start-up (Ctrl-C while starting) closes what was opened."""

    class SlowResources(FakeResourceSet):
        async def open(self):
            await super().open()
            await asyncio.sleep(10)
            return self.components

    resources = SlowResources()
    manager = make_manager(resources)
    task = asyncio.create_task(manager.start())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not resources.open_now
    assert manager.state is State.STOPPED


async def test_operations_are_routed_to_their_store():
    """Each operation reaches the store that serves it and returns its result."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    items = [VectorItem("a", [1.0, 0.0]), VectorItem("b", [0.0, 1.0])]
    assert await manager.coordinate(UpsertVectors("t1", "docs", items)) == 2
    found = await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.1], k=1))
    assert [m.id for m in found] == ["a"]

    points = [Point(t0 + timedelta(seconds=i), float(i)) for i in range(5)]
    assert await manager.coordinate(WritePoints("t1", "cpu.load", points)) == 5
    got = await manager.coordinate(
        QueryPoints(
            "t1", "cpu.load", t0 + timedelta(seconds=1), t0 + timedelta(seconds=3)
        )
    )
    assert [p.value for p in got.points] == [1.0, 2.0]

    features = [Feature("x", 2.35, 48.85), Feature("y", 13.4, 52.5)]
    assert await manager.coordinate(UpsertFeatures("t1", features)) == 2
    near = await manager.coordinate(FeaturesNearby("t1", 2.35, 48.86, 5_000.0))
    assert [m.feature.id for m in near] == ["x"]
    assert manager.stats["UpsertVectors"].calls == 1


async def test_unknown_operation_names_the_field():
    """An operation type the manager does not know is a validation error."""

    @dataclass(frozen=True)
    class DropEverything:
        tenant: str = "a"

    manager = make_manager()
    await manager.start()
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(DropEverything())  # type: ignore[call-overload]
    assert info.value.field == "operation"
    assert "DropEverything" in str(info.value)


async def test_bad_input_names_the_field_and_reaches_no_store():
    """Validation happens before routing: the store sees nothing."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    bad = UpsertVectors("t1", "docs", [VectorItem("a", [1.0, float("nan")])])
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(bad)
    assert info.value.field == "items[0].vector"
    assert fakes.vectors.rows == {}


async def test_transient_store_failure_is_retried():
    """A transient store error is retried within the operation policy."""
    fakes = Fakes()
    fakes.vectors.fail_next = [StoreUnavailableError("blip")]
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    n = await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0])]))
    assert n == 1


async def test_permanent_store_failure_is_raised_and_counted():
    """A non-transient store error reaches the caller once and is counted by kind
    (never by exception class name)."""
    fakes = Fakes()
    fakes.vectors.fail_next = [StoreError("nope"), StoreError("nope")]
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    with pytest.raises(StoreError, match="nope"):
        await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0])]))
    assert len(fakes.vectors.fail_next) == 1
    assert manager.stats["UpsertVectors"].failures == {"internal": 1}


async def test_health_before_start_is_not_ready():
    """Before start the report is DOWN and not ready, naming the state."""
    report = await make_manager().health()
    assert not report.ready
    assert report.component("lake").reason == "new"


async def test_health_reports_every_component_and_peer():
    """Every component and peer is checked; a missing peer is DEGRADED, not DOWN."""
    fakes = Fakes()
    fakes.mesh = FakeMesh({"cortex": True, "stream": False})
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    report = await manager.health()
    names = {c.name: c.status for c in report.components}
    assert names == {
        "postgres": Status.UP,
        "redis": Status.UP,
        "timeseries": Status.UP,
        "spatial": Status.UP,
        "vectors": Status.UP,
        "mesh.cortex": Status.UP,
        "mesh.stream": Status.DEGRADED,  # a missing peer degrades, never DOWN
    }
    assert report.ready
    assert report.status is Status.DEGRADED


async def test_concurrent_health_calls_share_one_probe():
    """Two health() calls at once probe each component once."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    await asyncio.gather(manager.health(), manager.health())
    assert fakes.database.pings == 1


async def test_stop_ends_a_health_probe_before_closing_the_resources():
    """A probe still running when Lake stops (health is shielded from its callers)
    is ended before the resources close, never left to reach a closed pool."""
    fakes = Fakes()
    resources = FakeResourceSet(fakes.components())
    manager = make_manager(resources)
    await manager.start()
    probing, ended = asyncio.Event(), asyncio.Event()
    still_open: list[bool] = []

    async def slow_ping() -> str | None:
        probing.set()
        try:
            await asyncio.Event().wait()  # a dependency that does not answer
        finally:
            still_open.append(resources.open_now)
            ended.set()
        return None

    fakes.cache.ping = slow_ping  # type: ignore[method-assign]
    caller = asyncio.create_task(manager.health())
    await probing.wait()
    caller.cancel()  # the caller gives up; the shielded probe goes on
    await manager.stop()
    assert ended.is_set()
    assert still_open == [True]  # it ended while the resources were still open
    assert resources.closes == 1


async def test_reads_go_through_the_cache_keyed_on_the_version():
    """A repeated read is served from the cache until a write changes the version."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0])]))
    op = SearchVectors("t1", "docs", [1.0], k=1)
    await manager.coordinate(op)
    await manager.coordinate(op)
    assert fakes.vectors.searches == 1
    assert fakes.cache.loads == 1
    fakes.database.generations[("t1", "vectors:docs")] = 7  # as a write would
    await manager.coordinate(op)
    assert fakes.vectors.searches == 2


async def test_reads_skip_the_cache_while_it_is_unavailable():
    """With the cache in cooldown, reads go straight to the store."""
    fakes = Fakes()
    fakes.cache.available = False
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    op = SearchVectors("t1", "docs", [1.0], k=1)
    await manager.coordinate(op)
    await manager.coordinate(op)
    assert fakes.vectors.searches == 2
    assert fakes.cache.loads == 0


async def test_writes_never_touch_the_cache():
    """Writes go to the store only."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0])]))
    assert fakes.cache.entries == {}


async def test_start_prepares_partitions_and_maintain_reaches_the_store():
    """Start-up runs partition upkeep once; maintain() runs it again."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    assert fakes.series.maintained == 1
    await manager.maintain()
    assert fakes.series.maintained == 2


async def test_status_before_and_after_start():
    """Status names the state; once running it adds pool, cache and event figures."""
    fakes = Fakes()
    manager = make_manager(FakeResourceSet(fakes.components()))
    before = await manager.status()
    assert before.as_dict() == {"state": "new", "operations": {}}
    await manager.start()
    await manager.coordinate(SearchVectors("t1", "docs", [1.0], k=1))
    after = await manager.status()
    assert after.state == "running"
    assert after.operations["SearchVectors"]["calls"] == 1
    assert after.pool is not None
    assert after.pool["size"] == 1
    assert after.events_pending == 0


async def test_operation_context_is_bound_during_the_call_only():
    """Store calls see tenant, operation and a request id; afterwards none remain."""
    import structlog

    seen: dict[str, object] = {}
    fakes = Fakes()
    original = fakes.vectors.search

    async def spying_search(*args, **kwargs):
        seen.update(structlog.contextvars.get_contextvars())
        return await original(*args, **kwargs)

    fakes.vectors.search = spying_search  # type: ignore[method-assign]
    manager = make_manager(FakeResourceSet(fakes.components()))
    await manager.start()
    await manager.coordinate(SearchVectors("t1", "docs", [1.0], k=1))
    assert seen["tenant"] == "t1"
    assert seen["operation"] == "SearchVectors"
    assert len(str(seen["request_id"])) == 16
    assert structlog.contextvars.get_contextvars() == {}


def protected_manager(fakes: Fakes, protection: Protection) -> ServiceManager:
    return ServiceManager(
        FakeResourceSet(fakes.components()),
        limits=Limits(max_batch=100, max_top_k=100),
        startup=RetryPolicy(attempts=3, timeout=5.0),
        operations=RetryPolicy(attempts=3, timeout=5.0),
        check_timeout=0.2,
        protection=protection,
    )


async def test_retries_stop_when_the_dependencys_budget_is_spent():
    """A retry is spent from PostgreSQL's budget; once it is empty a transient
    failure reaches the caller after one attempt."""
    fakes = Fakes()
    budget = BudgetSettings(ratio=0.0, min_per_s=0.1, ttl_s=10)  # one retry in 10 s
    manager = protected_manager(fakes, Protection(budget=budget))
    await manager.start()
    op = UpsertVectors("t1", "docs", [VectorItem("a", [1.0])])
    fakes.vectors.fail_next = [StoreUnavailableError("blip")]
    assert await manager.coordinate(op) == 1  # the one retry
    fakes.vectors.fail_next = [
        StoreUnavailableError("blip"),
        StoreUnavailableError("x"),
    ]
    with pytest.raises(StoreUnavailableError, match="blip"):
        await manager.coordinate(op)
    assert len(fakes.vectors.fail_next) == 1  # the second failure was never tried
    assert manager._protection.postgres.budget.snapshot() == {
        "retries": 1,
        "retries_denied": 1,
    }


async def test_a_read_past_its_adaptive_timeout_is_cut_and_retried():
    """An attempt that outlives clamp(k x p99) is cut (the dependency was too slow)
    and tried again within the caller's deadline."""
    fakes = Fakes()
    timeouts = TimeoutSettings(floor_s=0.05, ceiling_s=0.05)
    manager = protected_manager(fakes, Protection(timeouts=timeouts))
    await manager.start()
    answer = fakes.spatial.nearby
    hung = asyncio.Event()

    async def first_hangs(*args, **kwargs):
        if not hung.is_set():
            hung.set()
            await asyncio.Event().wait()  # never answers
        return await answer(*args, **kwargs)

    fakes.spatial.nearby = first_hangs  # type: ignore[method-assign]
    found = await manager.coordinate(FeaturesNearby("t1", 1.0, 2.0, 100.0))
    assert found == []
    tracker = manager._protection.postgres.timeouts("FeaturesNearby")
    assert tracker.timeouts == 1
    assert manager._protection.postgres.budget.snapshot()["retries"] == 1


async def test_an_open_breaker_answers_at_once_without_reaching_a_store():
    fakes = Fakes()
    protection = Protection(breaker=BreakerSettings(min_calls=1, open_wait_s=60))
    manager = protected_manager(fakes, protection)
    await manager.start()
    breaker = protection.postgres.breaker
    breaker.record(breaker.allow(), Outcome.FAILURE, 0.001)
    fakes.vectors.fail_next = [StoreError("must not be reached")]
    with pytest.raises(CircuitOpenError) as refused:
        await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0])]))
    assert refused.value.retry_after_s is not None
    assert 59 < refused.value.retry_after_s <= 60
    assert len(fakes.vectors.fail_next) == 1
    assert manager.stats["UpsertVectors"].failures == {"unavailable": 1}


async def test_quota_refusals_are_counted_by_quota_and_not_retried():
    fakes = Fakes()
    quotas = FakeQuotas()
    quotas.refuse = QuotaExceededError("read_per_s", "t1", 0.5)
    components = dataclasses.replace(fakes.components(), quotas=quotas)
    rejections = QuotaRejections()
    manager = ServiceManager(
        FakeResourceSet(components),
        limits=Limits(max_batch=100, max_top_k=100),
        startup=RetryPolicy(attempts=3, timeout=5.0),
        operations=RetryPolicy(attempts=3, timeout=5.0),
        quota_rejections=rejections,
    )
    await manager.start()
    with pytest.raises(QuotaExceededError):
        await manager.coordinate(FeaturesNearby("t1", 1.0, 2.0, 100.0))
    assert len(quotas.calls) == 1  # refused once, not retried
    assert rejections.counts == {"read_per_s": 1}
