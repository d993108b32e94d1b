"""
The real container with every provider overridden by a fake.
"""

from __future__ import annotations

from typing import Any

import pytest

from lake.container import aresolve, create_container
from lake.errors import LifecycleError, StoreError, StoreUnavailableError
from lake.manager import State
from lake.operations import SearchVectors, UpsertVectors, VectorItem
from tests.fakes import (
    FailingResource,
    FakeCache,
    FakeDatabase,
    FakeMesh,
    FakeMigrator,
    FakeQuotas,
    FakeRelay,
    FakeResource,
    FakeSpatialStore,
    FakeTimeSeriesStore,
    FakeVectorStore,
)


def overridden(settings: dict[str, Any], **extra: object) -> tuple[Any, Any, list[str]]:
    container = create_container(settings)
    order: list[str] = []
    fakes = {
        "pg_pool": FakeResource("pg_pool", order),
        "redis": FakeResource("redis", order),
        "mesh_client": FakeResource("mesh_client", order, value=FakeMesh()),
        "database": FakeDatabase(),
        "cache": FakeCache(),
        "vectors": FakeVectorStore(),
        "series": FakeTimeSeriesStore(),
        "spatial": FakeSpatialStore(),
        "migrator": FakeMigrator(),
        "relay": FakeRelay(),
        "quotas": FakeQuotas(),
    }
    fakes.update(extra)
    for name, fake in fakes.items():
        provider = getattr(container, name)
        if isinstance(fake, FakeResource | FailingResource):
            provider.override(type(provider)(fake))
            provider.enable_async_mode()
        else:
            provider.override(fake)
    return container, fakes, order


async def test_every_provider_can_be_replaced_by_a_fake(settings):
    """With all providers overridden, start, route, check and stop touch only fakes."""
    container, fakes, _ = overridden(settings)
    manager = await aresolve(container.manager)
    await manager.start()
    assert fakes["pg_pool"].is_open
    assert fakes["redis"].is_open
    assert fakes["migrator"].runs == 1
    await manager.coordinate(UpsertVectors("t1", "docs", [VectorItem("a", [1.0, 0.0])]))
    found = await manager.coordinate(SearchVectors("t1", "docs", [1.0, 0.0], k=3))
    assert [m.id for m in found] == ["a"]
    assert ("t1", "docs", "a") in fakes["vectors"].rows
    report = await manager.health()
    assert report.ready
    assert fakes["database"].pings == 1
    await manager.stop()
    assert not fakes["pg_pool"].is_open
    assert not fakes["redis"].is_open


async def test_start_failing_half_way_leaves_no_resource_open(settings):
    """When Redis cannot open, the PostgreSQL pool that did open is closed again."""
    failing = FailingResource(StoreUnavailableError("redis refused"))
    container, fakes, _ = overridden(settings, redis=failing)
    manager = await aresolve(container.manager)
    with pytest.raises(LifecycleError, match="redis refused"):
        await manager.start()
    assert failing.attempts == settings["startup"]["attempts"]  # transient: retried
    assert fakes["pg_pool"].opened >= 1
    assert fakes["pg_pool"].opened == fakes["pg_pool"].closed
    assert manager.state is State.STOPPED


async def test_stop_closes_every_opened_resource_once(settings):
    """Shutdown closes every resource the start opened, exactly once."""
    container, fakes, order = overridden(settings)
    manager = await aresolve(container.manager)
    await manager.start()
    await manager.stop()
    opened = {e.split()[1] for e in order if e.startswith("open")}
    closed = [e.split()[1] for e in order if e.startswith("close")]
    assert opened == {"pg_pool", "redis", "mesh_client"}
    assert sorted(closed) == sorted(opened)
    assert fakes["pg_pool"].closed == 1


async def test_config_reaches_the_manager_as_plain_values(settings):
    """Limits from settings bound what an operation may ask for."""
    settings["limits"]["max_top_k"] = 5
    container, _, _ = overridden(settings)
    manager = await aresolve(container.manager)
    await manager.start()
    with pytest.raises(ValueError, match=r"k: must lie in \[1, 5\]"):
        await manager.coordinate(SearchVectors("t1", "docs", [1.0], k=6))
    await manager.stop()


async def test_a_failed_start_closes_each_opened_resource_once(settings):
    """A permanent failure opening Redis closes the pool and mesh once, unretried."""
    failing = FailingResource(StoreError("redis rejected the password"))
    container, fakes, _ = overridden(settings, redis=failing)
    manager = await aresolve(container.manager)
    with pytest.raises(LifecycleError, match="rejected the password"):
        await manager.start()
    assert failing.attempts == 1
    for name in ("pg_pool", "mesh_client"):
        assert (fakes[name].opened, fakes[name].closed) == (1, 1)


async def test_the_relay_worker_runs_only_with_a_stream_peer(settings):
    """The container decides once whether a stream peer is configured."""
    settings["mesh"]["peers"] = {}
    names = [w.name for w in create_container(settings).workers()]
    assert names == ["upkeep", "usage-flusher"]
    settings["mesh"]["peers"] = {"stream": ["127.0.0.1:1"]}
    container = create_container(settings)
    names = [w.name for w in container.workers()]
    assert names == ["upkeep", "relay", "usage-flusher"]
    assert container.events()


async def test_the_container_shows_the_server_and_the_workers(settings):
    """The whole service resolves from the container without opening anything."""
    container = create_container(settings)
    lake = container.lake()
    assert lake.server is container.server()
    assert lake.manager is container.manager()
    assert container.migration().server is None
