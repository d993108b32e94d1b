"""
/metrics over real HTTP from a running Lake: every family named in the README,
with values that move as calls are made.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from lake.bootstrap import Lake
from lake.container import aresolve
from lake.stores.database import Database
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import api_container, auth
from tests.waiting import eventually

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

FAMILIES = {
    "lake_operations": "counter",
    "lake_operation_duration_seconds": "histogram",
    "lake_pool_connections": "gauge",
    "lake_pool_acquire_seconds": "histogram",
    "lake_pool_acquire_timeouts": "counter",
    "lake_pool_usage_seconds": "histogram",
    "lake_pool_connections_created": "counter",
    "lake_pool_connection_creation_seconds": "histogram",
    "lake_redis_connections": "gauge",
    "lake_cache_requests": "counter",
    "lake_events_pending": "gauge",
    "lake_event_loop_lag_seconds": "gauge",
    "lake_quota_rejections": "counter",
    "lake_breaker_state": "gauge",
    "lake_breaker_transitions": "counter",
    "lake_breaker_rejected": "counter",
    "lake_retries": "counter",
    "lake_retries_denied": "counter",
    "lake_attempt_timeout_seconds": "gauge",
    "lake_attempt_timeouts": "counter",
    "lake_pool_shed": "counter",
    "process_cpu_seconds": "counter",
}


class Scrape:
    """One parsed scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


def _get(url: str) -> tuple[str, str]:
    # A plain HTTP client, as a scraper or curl would be.
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 -- http to our own loopback server
        return reply.headers["Content-Type"], reply.read().decode()


async def scrape(address: str) -> Scrape:
    content_type, text = await asyncio.to_thread(_get, f"http://{address}/metrics")
    assert content_type.startswith("text/plain")
    return Scrape(text)


@asynccontextmanager
async def lake_with_metrics(
    settings: dict[str, Any], **options: Any
) -> AsyncIterator[tuple[Lake, grpc.aio.Channel]]:
    container = api_container(settings, metrics_address="127.0.0.1:0", **options)
    lake: Lake = await aresolve(container.lake)
    await lake.start()
    assert lake.server is not None
    assert lake.metrics is not None
    channel = grpc.aio.insecure_channel(lake.server.address)
    try:
        yield lake, channel
    finally:
        await channel.close(None)
        await lake.stop()


def _write(i: int) -> lake_pb2.WritePointsRequest:
    stamp = int((NOW + timedelta(seconds=i)).timestamp() * 1_000_000)
    return lake_pb2.WritePointsRequest(
        metric="cpu", tags={"host": "a"}, timestamps_us=[stamp], values=[float(i)]
    )


async def test_metrics_families_move_with_traffic(lake_settings):
    """Every family is served; operation counts by code, durations, pool acquires
    and holds, new connections and cache results follow the calls made."""
    async with lake_with_metrics(lake_settings) as (lake, channel):
        assert lake.metrics is not None
        address = lake.metrics.address
        before = await scrape(address)
        for name, kind in FAMILIES.items():
            assert before.types.get(name) == kind, name
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        n = 5
        for i in range(n):
            await series.Write(_write(i), metadata=auth())
        query = lake_pb2.QueryPointsRequest(metric="cpu", limit=10)
        query.start.FromDatetime(NOW)
        query.end.FromDatetime(NOW + timedelta(minutes=1))
        for _ in range(2):
            await series.Query(query, metadata=auth())

        after = await scrape(address)
        ok = after.value("lake_operations_total", operation="WritePoints", code="OK")
        assert ok is not None
        assert ok >= n
        count = after.value(
            "lake_operation_duration_seconds_count", operation="WritePoints"
        )
        assert count is not None
        assert count >= n
        acquired = after.value("lake_pool_acquire_seconds_count") or 0.0
        assert acquired >= (before.value("lake_pool_acquire_seconds_count") or 0) + n
        assert (after.value("lake_pool_usage_seconds_count") or 0) >= n
        assert (after.value("lake_pool_connections_created_total") or 0) >= 1
        assert after.value("lake_pool_connections", state="max") == float(
            lake_settings["postgres"]["max_size"]
        )
        hits = after.value("lake_cache_requests_total", result="hit") or 0.0
        misses = after.value("lake_cache_requests_total", result="miss") or 0.0
        assert hits + misses >= 1
        redis_max = lake_settings["redis"]["max_connections"]
        assert after.value("lake_redis_connections", state="max") == redis_max
        assert after.value("lake_events_pending") is not None
        assert after.value("lake_event_loop_lag_seconds") is not None
        cpu = after.value("process_cpu_seconds_total")
        assert cpu is not None
        assert cpu > 0
        # The protection layer: every breaker closed, a timeout per read kind.
        for dependency in ("postgres", "redis"):
            assert after.value("lake_breaker_state", dependency=dependency) == 0
        assert after.value("lake_retries_total", dependency="postgres") == 0
        assert (
            after.value(
                "lake_attempt_timeout_seconds",
                dependency="postgres",
                kind="QueryPoints",
            )
            is not None
        )


async def test_pending_counts_tasks_waiting_for_a_connection(lake_settings):
    """With every pooled connection held, a task waiting for one shows as pending
    and the active count is the pool's maximum; released, pending drops to 0."""
    lake_settings["postgres"].update(min_size=1, max_size=2, acquire_timeout=30.0)
    async with lake_with_metrics(lake_settings) as (lake, _):
        assert lake.metrics is not None
        components = lake.manager.components
        assert components is not None
        database = components.database
        assert isinstance(database, Database)
        held = 0
        release = asyncio.Event()

        async def hold(tenant: str) -> None:
            nonlocal held
            # One tenant may hold half the pool (fair shares): two tenants fill it.
            async with database.connection(tenant):
                held += 1
                await release.wait()

        holders = [asyncio.create_task(hold(t)) for t in ("a", "b")]
        await eventually(lambda: held == 2)
        waiter = asyncio.create_task(hold("c"))
        await eventually(lambda: database.metrics()["pending"] >= 1)

        busy = await scrape(lake.metrics.address)
        assert (busy.value("lake_pool_connections", state="pending") or 0) >= 1
        assert busy.value("lake_pool_connections", state="active") == 2
        assert busy.value("lake_pool_connections", state="idle") == 0

        release.set()
        await asyncio.gather(*holders, waiter)
        idle = await scrape(lake.metrics.address)
        assert idle.value("lake_pool_connections", state="pending") == 0
