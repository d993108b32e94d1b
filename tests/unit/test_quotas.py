"""
Quotas without servers: the class of every operation, the policy, the local
bucket, leases and refusals, and how a refusal is encoded for the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from lake.api.quota_status import RETRY_AFTER_KEY, quota_status
from lake.errors import QuotaExceededError, ResourceExhaustedError
from lake.models import Point
from lake.opclasses import CLASSES, OPERATION_CLASSES
from lake.operations import QueryPoints, SearchVectors, UpsertVectors, WritePoints
from lake.quotas.local import LocalBuckets
from lake.quotas.policy import QuotaBook
from lake.quotas.rates import RateQuotas
from lake.resilience import is_transient
from lake.routes import ROUTES
from tests.fakes import FakeQuotas, FakeResourceSet, Fakes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLimiter:
    """A shared limiter with ``budget`` calls, recording each hit's cost."""

    budget: int
    costs: list[int] = field(default_factory=list)

    async def hit(self, item, *ids, cost=1):
        self.costs.append(cost)
        if cost > self.budget:
            return False
        self.budget -= cost
        return True

    async def get_window_stats(self, item, *ids):
        import time

        from limits import WindowStats

        return WindowStats(time.time() + 0.5, 0)


def test_every_routed_operation_has_one_class():
    """The class table covers exactly the routing table, with known classes."""
    assert set(OPERATION_CLASSES) == set(ROUTES)
    assert set(OPERATION_CLASSES.values()) == set(CLASSES)
    assert OPERATION_CLASSES[SearchVectors] == "search"
    assert OPERATION_CLASSES[QueryPoints] == "read"
    assert OPERATION_CLASSES[UpsertVectors] == "write"


def test_book_overrides_win_over_defaults_and_caps_follow():
    """A tenant's override replaces its default; others keep the defaults."""
    book = QuotaBook({"read_per_s": 10, "max_vectors": 100})
    assert book.limited
    book.replace({"acme": {"read_per_s": 0, "max_vectors": 5, "text_per_s": 2}})
    assert book.rate("acme", "read") == 0  # an override of 0: unlimited
    assert book.rate("acme", "text") == 2
    assert book.rate("other", "read") == 10
    assert book.caps("acme").vectors == 5
    assert book.caps("other").vectors == 100
    assert book.effective("acme")["max_vectors"] == 5
    assert not QuotaBook({}).limited


def test_local_bucket_allows_its_burst_then_says_when():
    """A bucket of 2 at 1/s: two calls pass, the third waits a second."""
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    key = ("t", "read")
    assert buckets.take(key, 1.0, 2) is None
    assert buckets.take(key, 1.0, 2) is None
    assert buckets.take(key, 1.0, 2) == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take(key, 1.0, 2) is None


async def test_unlimited_asks_nothing_and_limited_hits_once_per_call():
    """0 never reaches the limiter; a limit hits once per call (cost 1)."""
    limiter = FakeLimiter(budget=2)
    quotas = RateQuotas(QuotaBook({"write_per_s": 2}), None, limiter=limiter)  # type: ignore[arg-type]
    for _ in range(5):
        await quotas.admit("t", "read")
    assert limiter.costs == []
    await quotas.admit("t", "write")
    await quotas.admit("t", "write")
    with pytest.raises(QuotaExceededError) as info:
        await quotas.admit("t", "write")
    assert info.value.quota == "write_per_s"
    assert 0 < (info.value.retry_after or 0) <= 1.0
    assert limiter.costs == [1, 1, 1]


async def test_a_refusal_is_remembered_without_asking_again():
    """Once refused, calls within the retry time are refused locally."""
    clock = Clock()
    limiter = FakeLimiter(budget=0)
    quotas = RateQuotas(
        QuotaBook({"read_per_s": 1}),
        None,
        limiter=limiter,  # type: ignore[arg-type]
        clock=clock,
    )
    for _ in range(3):
        with pytest.raises(QuotaExceededError):
            await quotas.admit("t", "read")
    assert limiter.costs == [1]
    clock.now += 1.0
    with pytest.raises(QuotaExceededError):
        await quotas.admit("t", "read")
    assert limiter.costs == [1, 1]


async def test_a_lease_takes_a_share_of_the_budget_per_hit():
    """100/s with lease 0.05: one hit of cost 5 serves five calls."""
    limiter = FakeLimiter(budget=1000)
    quotas = RateQuotas(
        QuotaBook({"read_per_s": 100}),
        None,
        limiter=limiter,  # type: ignore[arg-type]
        lease=0.05,
    )
    for _ in range(10):
        await quotas.admit("t", "read")
    assert limiter.costs == [5, 5]


async def test_without_redis_the_local_bucket_counts():
    """No shared limiter: the instance counts alone at the configured rate."""
    quotas = RateQuotas(QuotaBook({"read_per_s": 2}), None)
    await quotas.admit("t", "read")
    await quotas.admit("t", "read")
    with pytest.raises(QuotaExceededError):
        await quotas.admit("t", "read")
    assert await quotas.ping() == "quotas local"
    assert quotas.stats()["mode"] == "local"


def test_refusal_is_resource_exhausted_and_never_retried():
    """A quota refusal is RESOURCE_EXHAUSTED's kind and not transient."""
    exc = QuotaExceededError("read_per_s", "acme", 0.25)
    assert isinstance(exc, ResourceExhaustedError)
    assert not is_transient(exc)
    assert str(exc) == "quota read_per_s exceeded for tenant acme"


def test_status_carries_quota_failure_retry_info_and_retry_after_ms():
    """The rich status decodes to QuotaFailure and RetryInfo; retry-after-ms too."""
    status = quota_status(QuotaExceededError("read_per_s", "acme", 0.2501))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "quota read_per_s exceeded for tenant acme"
    metadata = dict(status.trailing_metadata)
    assert metadata[RETRY_AFTER_KEY] == "251"
    rich = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    failure = error_details_pb2.QuotaFailure()
    retry = error_details_pb2.RetryInfo()
    assert rich.details[0].Unpack(failure)
    assert rich.details[1].Unpack(retry)
    assert failure.violations[0].quota_id == "read_per_s"
    assert failure.violations[0].subject == "tenant:acme"
    assert retry.retry_delay.ToMilliseconds() == 251


def test_a_storage_cap_says_no_retry():
    """A cap that waiting will not lift carries no RetryInfo, no retry-after-ms."""
    status = quota_status(QuotaExceededError("max_vectors", "acme"))
    metadata = dict(status.trailing_metadata)
    assert RETRY_AFTER_KEY not in metadata
    rich = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    assert len(rich.details) == 1


async def test_manager_admits_after_validation_and_refusal_skips_the_store():
    """Invalid input is refused before the quota; a refused call reaches no store."""
    from dataclasses import replace

    from lake.errors import ValidationError
    from lake.manager import ServiceManager
    from lake.models import Limits
    from lake.resilience import RetryPolicy

    fakes = Fakes()
    quotas = FakeQuotas()
    components = replace(fakes.components(), quotas=quotas)
    manager = ServiceManager(
        FakeResourceSet(components),
        limits=Limits(),
        startup=RetryPolicy(attempts=1),
        operations=RetryPolicy(attempts=3),
    )
    await manager.start()
    from datetime import UTC, datetime

    point = Point(datetime.now(UTC), 1.0)
    with pytest.raises(ValidationError):
        await manager.coordinate(WritePoints("t", "", [point]))
    assert quotas.calls == []
    await manager.coordinate(WritePoints("t", "m", [point]))
    assert quotas.calls == [("t", "write")]
    quotas.refuse = QuotaExceededError("write_per_s", "t", 1.0)
    with pytest.raises(QuotaExceededError):
        await manager.coordinate(WritePoints("t", "m2", [point]))
    assert quotas.calls == [("t", "write")] * 2  # once: not retried
    assert {metric for _, metric, _, _ in fakes.series.points} == {"m"}
    report = await manager.health()
    assert report.component("quotas").reason == ""
    await manager.stop()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LAKE_QUOTAS__DEFAULT__READ_PER_S", "-1"),
        ("LAKE_QUOTAS__DEFAULT__MAX_VECTORS", "1.5"),
        ("LAKE_QUOTAS__REFRESH_S", "10"),
        ("LAKE_QUOTAS__STRATEGY", "fixed-window"),
    ],
)
def test_bad_quota_settings_are_refused_at_boot(monkeypatch, variable, value):
    """Negative rates, fractional caps, a refresh over 5 s, unknown strategies."""
    from lake.config import load_settings
    from lake.errors import ConfigError

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable.removeprefix("LAKE_").lower()[:6]):
        load_settings("testing")


def test_quota_settings_reach_the_book(monkeypatch):
    """quotas.default from the environment is what the book holds."""
    from lake.config import load_settings

    monkeypatch.setenv("LAKE_QUOTAS__DEFAULT__SEARCH_PER_S", "2.5")
    values = load_settings("testing")
    book = QuotaBook(values["quotas"]["default"])
    assert book.rate("t", "search") == 2.5
    assert book.rate("t", "read") == 0
