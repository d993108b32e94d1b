"""
The Lake bootstrap: start in order, stop in reverse, exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from lake.bootstrap import Lake
from lake.errors import ConfigError, LifecycleError, StoreError
from lake.manager import ServiceManager, State
from lake.models import Limits
from lake.resilience import RetryPolicy
from tests.fakes import FakeResourceSet
from tests.waiting import eventually


class RecordingWorker:
    """A worker that notes its start and stop in a shared log."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


class LoggedResources(FakeResourceSet):
    """Fake resources that note their closing in the shared log."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def close(self) -> None:
        await super().close()
        self.log.append("close resources")


def make_lake(resources: FakeResourceSet, log: list[str]) -> Lake:
    manager = ServiceManager(
        resources,
        limits=Limits(),
        startup=RetryPolicy(attempts=3, timeout=5.0),
        operations=RetryPolicy(attempts=1, timeout=5.0),
    )
    workers = [RecordingWorker("upkeep", log), RecordingWorker("relay", log)]
    return Lake(manager, workers=workers)


async def test_workers_start_after_the_manager_and_stop_before_it():
    """Start: resources, then workers; stop: workers in reverse, then resources."""
    log: list[str] = []
    resources = LoggedResources(log)
    lake = make_lake(resources, log)
    await lake.start()
    assert lake.manager.state is State.RUNNING
    assert log == ["start upkeep", "start relay"]
    await lake.stop()
    await lake.stop()
    assert log == [
        "start upkeep",
        "start relay",
        "stop relay",
        "stop upkeep",
        "close resources",
    ]


async def test_a_failed_start_closes_the_resources_exactly_once():
    """A permanent start-up failure closes what opened once; no worker starts."""
    log: list[str] = []
    resources = LoggedResources(log)
    resources.failures = [StoreError("database rejected the credentials")]
    lake = make_lake(resources, log)
    with pytest.raises(LifecycleError, match="rejected the credentials"):
        await lake.start()
    await lake.stop()
    assert resources.opens == 1
    assert resources.closes == 1
    assert not resources.open_now
    assert log.count("close resources") == 1
    assert not [entry for entry in log if entry.startswith("start")]


async def test_run_returns_1_when_the_manager_cannot_start():
    """run() reports a failed start with exit code 1 and leaves nothing open."""
    log: list[str] = []
    resources = LoggedResources(log)
    resources.failures = [StoreError("database rejected the credentials")]
    lake = make_lake(resources, log)
    assert await lake.run(asyncio.Event()) == 1
    assert resources.closes == 1
    assert not resources.open_now


async def test_run_serves_until_stop_is_set_then_stops_once():
    """run() starts everything, waits for the stop event, then stops in reverse."""
    log: list[str] = []
    resources = LoggedResources(log)
    lake = make_lake(resources, log)
    stop = asyncio.Event()
    running = asyncio.create_task(lake.run(stop))
    await eventually(lambda: "start relay" in log)
    stop.set()
    assert await running == 0
    assert log[-3:] == ["stop relay", "stop upkeep", "close resources"]
    assert resources.closes == 1


class RefusingServer:
    """A server whose port is taken: start() refuses; records stop() calls."""

    def __init__(self) -> None:
        self.stops = 0

    async def start(self) -> None:
        msg = "grpc.address 127.0.0.1:1 is already in use by another process"
        raise ConfigError(msg)

    async def stop(self, grace: float | None) -> None:
        self.stops += 1


async def test_a_server_that_cannot_listen_starts_nothing_and_is_not_stopped():
    """When the port is refused, the manager never opens and nothing is closed."""
    log: list[str] = []
    resources = LoggedResources(log)
    lake = make_lake(resources, log)
    server = RefusingServer()
    lake.server = server  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="already in use"):
        await lake.run(asyncio.Event())
    assert resources.opens == 0
    assert server.stops == 0
    assert lake.manager.state is State.STOPPED
