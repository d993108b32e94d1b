"""
Dependencies going away and coming back while Lake runs.

These tests start their own PostgreSQL and Redis so they can stop and restart them
without disturbing the rest of the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from lake.container import aresolve, create_container
from lake.errors import StoreUnavailableError
from lake.health import Status
from lake.manager import ServiceManager
from lake.operations import Point, QueryPoints, WritePoints
from lake.resources.embedded import EmbeddedPostgres, EmbeddedRedis, Endpoint
from tests.servers import live_settings

# Inside the retention window, whatever day the tests run.
T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
    days=1
)


@pytest.fixture
def own_servers(
    tmp_path,
) -> Iterator[tuple[EmbeddedPostgres, EmbeddedRedis, dict[str, Endpoint]]]:
    pg, rd = EmbeddedPostgres(tmp_path), EmbeddedRedis(tmp_path)
    try:
        ends: dict[str, Endpoint] = {"postgres": pg.start(), "redis": rd.start()}
        yield pg, rd, ends
    finally:
        rd.stop()
        pg.stop()


@pytest.fixture
async def running(own_servers) -> AsyncIterator[ServiceManager]:
    _, _, ends = own_servers
    settings = live_settings(ends, ends["postgres"].url)
    manager = await aresolve(create_container(settings).manager)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()


async def test_postgres_down_then_back_without_restarting_lake(own_servers, running):
    """PostgreSQL stopped: DOWN, not ready; started again: UP in the same Lake."""
    pg, _, _ = own_servers
    await running.coordinate(WritePoints("t1", "m", [Point(T0, 1.0)]))
    pg.stop()
    down = await running.health()
    assert down.component("postgres").status is Status.DOWN
    assert down.component("postgres").reason
    assert not down.ready
    assert down.status is Status.DOWN
    with pytest.raises(StoreUnavailableError):
        await running.coordinate(QueryPoints("t1", "m", T0, T0 + timedelta(days=1)))

    pg.start()
    up = await running.health()
    assert up.component("postgres").status is Status.UP
    assert up.ready
    got = await running.coordinate(QueryPoints("t1", "m", T0, T0 + timedelta(days=1)))
    assert [p.value for p in got.points] == [1.0]  # acknowledged data survived


async def test_redis_down_degrades_but_stays_ready(own_servers, running):
    """Redis stopped: redis DOWN, Lake DEGRADED and still ready and serving."""
    _, rd, _ = own_servers
    rd.stop()
    report = await running.health()
    assert report.component("redis").status is Status.DOWN
    assert report.component("redis").reason == "redis did not answer PING"
    assert report.ready
    assert report.status is Status.DEGRADED
    assert await running.coordinate(WritePoints("t1", "m", [Point(T0, 2.0)])) == 1

    rd.start()
    report = await running.health()
    assert report.component("redis").status is Status.UP
    assert report.status is Status.UP
