"""
The metrics recorders (histograms, pool, operations) and the registry, merge and
endpoint that read them when scraped.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from lake.api.errors import status_of
from lake.errors import (
    ConfigError,
    LakeError,
    ResourceExhaustedError,
    StoreError,
    ValidationError,
)
from lake.histogram import Histogram
from lake.manager import _FAILURE_KINDS, ServiceManager, _failure_kind
from lake.metrics import (
    MetricsPublisher,
    MetricsRegistry,
    families_from_json,
    families_to_json,
    merge_families,
)
from lake.metricserver import MetricsServer
from lake.operations import Limits, UpsertVectors, VectorItem
from lake.opmetrics import CODES, OperationMetrics, QuotaRejections
from lake.poolmetrics import PoolMetrics
from lake.resilience import RetryPolicy
from lake.stores.database import Database
from lake.workerstatus import StatusBoard
from tests.fakes import FakeResourceSet, Fakes
from tests.waiting import eventually


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


# --- histograms -------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative():
    """A value equal to a bound counts in that bound's bucket; +Inf holds all."""
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        h.observe(v)
    assert list(h.cumulative()) == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4
    assert h.sum == pytest.approx(2.65)


def test_histogram_quantile_interpolates_within_the_bucket():
    """As histogram_quantile: linear within the bucket holding the rank."""
    h = Histogram((1.0, 2.0))
    for _ in range(4):
        h.observe(1.5)
    assert h.quantile(0.5) == pytest.approx(1.5)
    assert Histogram((1.0,)).quantile(0.99) == 0.0


def test_histogram_refuses_unsorted_bounds():
    """Bounds must ascend strictly."""
    with pytest.raises(ValueError, match="ascend"):
        Histogram((1.0, 0.5))


# --- the pool -----------------------------------------------------------------------


class FakePool:
    """An asyncpg-like pool whose acquire waits until a connection is given."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.in_use = 0
        self.waiting: list[asyncio.Future[object]] = []

    async def acquire(self) -> object:
        if self.in_use < self.size:
            self.in_use += 1
            return object()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        return await future

    async def release(self, conn: object) -> None:
        if self.waiting:
            self.waiting.pop(0).set_result(conn)
        else:
            self.in_use -= 1

    def get_size(self) -> int:
        return self.size

    def get_idle_size(self) -> int:
        return self.size - self.in_use

    def get_min_size(self) -> int:
        return 1

    def get_max_size(self) -> int:
        return self.size


async def test_pool_metrics_follow_waits_holds_and_timeouts():
    """A wait shows as pending until it gets a connection or gives up; every
    acquire and hold is timed; a timeout is counted and refused."""
    pool = FakePool(size=1)
    metrics = PoolMetrics()
    db = Database(pool, acquire_timeout=0.05, pool_metrics=metrics)
    release = asyncio.Event()

    async def hold() -> None:
        async with db.connection():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert metrics.states() == {
        "active": 1,
        "idle": 0,
        "pending": 0,
        "min": 1,
        "max": 1,
    }
    with pytest.raises(ResourceExhaustedError):
        async with db.connection():
            pass
    assert metrics.timeouts == 1
    assert metrics.pending == 0

    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert metrics.pending == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert metrics.pending == 0

    release.set()
    await holder
    assert metrics.acquire.count == 1
    assert metrics.usage.count == 1
    figures = db.metrics()
    assert figures["acquire_timeouts"] == 1
    assert figures["pending"] == 0


def test_pool_metrics_collect_every_pool_family():
    """Connections by state, the three histograms and both counters."""
    metrics = PoolMetrics()
    metrics.connected(0.004)
    metrics.acquired(metrics.acquiring())
    names = {f.name: f for f in metrics.collect()}
    assert set(names) == {
        "lake_pool_connections",
        "lake_pool_acquire_seconds",
        "lake_pool_acquire_timeouts",
        "lake_pool_usage_seconds",
        "lake_pool_connections_created",
        "lake_pool_connection_creation_seconds",
    }
    states = {s.labels["state"] for s in names["lake_pool_connections"].samples}
    assert states == {"active", "idle", "pending", "min", "max"}
    created = names["lake_pool_connections_created"].samples[0]
    assert created.value == 1


# --- operations ---------------------------------------------------------------------


def test_operation_metrics_count_by_code_and_time_every_call():
    """Calls counted per operation and status code, every one timed."""
    ops = OperationMetrics()
    ops.record("WritePoints", "t1", 0.002, None)
    ops.record("WritePoints", "t2", 0.004, None)
    ops.record("WritePoints", "t1", 0.001, "invalid_argument")
    assert ops.calls("WritePoints") == 2
    assert ops.calls("WritePoints", "INVALID_ARGUMENT") == 1
    calls, durations = list(ops.collect())
    labels = {tuple(sorted(s.labels.items())) for s in calls.samples}
    assert (("code", "OK"), ("operation", "WritePoints")) in labels
    count = [s for s in durations.samples if s.name.endswith("_count")]
    assert count[0].value == 3


def test_tenant_label_only_for_allowed_tenants():
    """Named tenants get their own series; all others share tenant=""."""
    ops = OperationMetrics(tenant_labels=["big"])
    ops.record("Query", "big", 0.001, None)
    ops.record("Query", "small", 0.001, None)
    ops.record("Query", "other", 0.001, None)
    calls = next(iter(ops.collect()))
    by_tenant = {s.labels["tenant"]: s.value for s in calls.samples}
    assert by_tenant == {"big": 1, "": 2}
    plain = next(iter(OperationMetrics().collect()))
    assert plain.samples == []


@pytest.mark.parametrize(("error", "kind"), _FAILURE_KINDS)
def test_codes_match_what_the_api_answers(error: type[LakeError], kind: str):
    """The code label of a failure kind is the status the API sends for it."""
    exc = error("field", "x") if issubclass(error, ValidationError) else error("x")
    code, _ = status_of(exc)
    assert CODES[_failure_kind(exc)] == code.name
    assert CODES[kind] == code.name


async def test_manager_records_codes_including_cancelled_and_internal():
    """Success, a store failure (INTERNAL) and a cancelled call each counted."""
    fakes = Fakes()
    ops = OperationMetrics()
    manager = ServiceManager(
        FakeResourceSet(fakes.components()),
        limits=Limits(max_batch=100, max_top_k=100),
        startup=RetryPolicy(attempts=3, timeout=5.0),
        operations=RetryPolicy(attempts=1, timeout=5.0),
        metrics=ops,
    )
    await manager.start()
    op = UpsertVectors("t1", "docs", [VectorItem("a", [1.0])])
    await manager.coordinate(op)
    fakes.vectors.fail_next = [StoreError("nope")]
    with pytest.raises(StoreError):
        await manager.coordinate(op)
    fakes.vectors.fail_next = [RuntimeError("bug")]
    with pytest.raises(RuntimeError):
        await manager.coordinate(op)
    assert ops.calls("UpsertVectors") == 1
    assert ops.calls("UpsertVectors", "INTERNAL") == 2
    await manager.stop()


def test_quota_rejections_count_by_quota():
    """One counter per quota name."""
    quotas = QuotaRejections()
    quotas.rejected("read_per_s")
    quotas.rejected("read_per_s")
    family = next(iter(quotas.collect()))
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"quota": "read_per_s"}, 2)
    ]


# --- registry, merge, endpoint ------------------------------------------------------


class Broken:
    def collect(self) -> Iterator[Metric]:
        msg = "boom"
        raise RuntimeError(msg)


class Slow:
    def __init__(self) -> None:
        self.value: float | None = None

    async def refresh(self) -> None:
        await asyncio.Event().wait()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("slow", "never refreshed")


class Counting:
    def __init__(self, name: str, value: float) -> None:
        self.name = name
        self.value = value

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, "a counter", value=self.value)


async def test_registry_leaves_out_broken_and_slow_sources():
    """A failing collect() or a refresh past its time box costs only its own
    families; the rest is served."""
    registry = MetricsRegistry(
        [Broken(), Slow(), Counting("things", 3)], refresh_timeout=0.01
    )
    body, content_type = await registry.exposition()
    assert content_type.startswith("text/plain")
    samples = parse(body.decode())
    assert samples[("things_total", frozenset())] == 3


async def test_registry_speaks_openmetrics_when_asked():
    """The scraper's Accept header picks the format."""
    registry = MetricsRegistry([Counting("things", 1)])
    body, content_type = await registry.exposition(
        "application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_merge_sums_counters_and_takes_the_worst_lag():
    """Workers' counters and histograms add up; loop lag is the worst one."""

    def worker(calls: float, lag: float) -> list[Metric]:
        ops = OperationMetrics()
        for _ in range(int(calls)):
            ops.record("Query", "t", 0.001, None)
        lag_family = GaugeMetricFamily("lake_event_loop_lag_seconds", "lag", lag)
        return [*ops.collect(), lag_family]

    round_trip = families_from_json(families_to_json(worker(3, 0.5)))
    merged = merge_families([worker(2, 0.1), round_trip])
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in merged
        for s in f.samples
    }
    assert (
        values[("lake_operations_total", (("code", "OK"), ("operation", "Query")))] == 5
    )
    count = ("lake_operation_duration_seconds_count", (("operation", "Query"),))
    assert values[count] == 5
    assert values[("lake_event_loop_lag_seconds", ())] == 0.5


def test_malformed_worker_file_reads_as_nothing():
    """A half-understood file from another worker is skipped, not fatal."""
    assert families_from_json([{"name": "x"}]) == []
    assert families_from_json("nonsense") == []


async def _request(address: str, raw: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def test_endpoint_serves_metrics_and_refuses_the_rest():
    """GET /metrics is 200 (gzip when accepted); other paths 404; POST 405;
    an empty address listens nowhere."""
    server = MetricsServer(
        MetricsRegistry([Counting("things", 7)]), address="127.0.0.1:0"
    )
    await server.start()
    try:
        ok = await _request(server.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert parse(body.decode())[("things_total", frozenset())] == 7
        zipped = await _request(
            server.address,
            b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        head, _, body = zipped.partition(b"\r\n\r\n")
        assert b"Content-Encoding: gzip" in head
        assert b"things_total 7.0" in gzip.decompress(body)
        missing = await _request(server.address, b"GET /nope HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        post = await _request(server.address, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
    finally:
        await server.stop()
        await server.stop()
    off = MetricsServer(MetricsRegistry(), address="")
    await off.start()
    assert off.address == ""


async def test_listening_worker_adds_what_the_others_publish(tmp_path):
    """Worker 1 publishes its families to the board; worker 0's scrape sums them
    with its own."""
    own = OperationMetrics()
    own.record("Query", "t", 0.001, None)
    other = OperationMetrics()
    for _ in range(2):
        other.record("Query", "t", 0.001, None)
    first = StatusBoard(directory=str(tmp_path), index=0, count=2)
    second = StatusBoard(directory=str(tmp_path), index=1, count=2)
    publisher = MetricsPublisher(second, MetricsRegistry([other]))
    publisher.start()
    await eventually(lambda: (tmp_path / "metrics-1.json").exists())
    await publisher.stop()
    body, _ = await MetricsRegistry([own], board=first).exposition()
    calls = (
        "lake_operations_total",
        frozenset({("operation", "Query"), ("code", "OK")}),
    )
    assert parse(body.decode())[calls] == 3


async def test_endpoint_on_a_taken_port_says_so():
    """A port another socket holds is refused with the setting's name."""
    first = MetricsServer(MetricsRegistry(), address="127.0.0.1:0")
    await first.start()
    try:
        second = MetricsServer(MetricsRegistry(), address=first.address)
        with pytest.raises(ConfigError, match=r"metrics\.address .* already in use"):
            await second.start()
    finally:
        await first.stop()
