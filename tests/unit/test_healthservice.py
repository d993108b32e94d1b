"""
The health service's Watch streams end when Lake stops.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health_pb2

from lake.api.healthservice import HealthService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Stream:
    """What a Watch writes."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.wrote = asyncio.Event()

    async def write(self, message: Any) -> None:
        self.sent.append(message.status)
        self.wrote.set()


async def test_an_open_watch_ends_when_watches_end():
    """A Watch sends each status until end_watches(); then it returns."""
    service = HealthService()
    await service.set("lake.ready", SERVING)
    stream = Stream()
    watch = asyncio.create_task(
        service.Watch(health_pb2.HealthCheckRequest(service="lake.ready"), stream)
    )
    await stream.wrote.wait()
    await service.enter_graceful_shutdown()
    await service.end_watches()
    await watch
    assert stream.sent[0] == SERVING
    assert stream.sent[-1] == NOT_SERVING


async def test_a_watch_after_the_end_says_not_serving_and_ends():
    """A Watch that arrives once watches ended gets NOT_SERVING and returns."""
    service = HealthService()
    await service.end_watches()
    stream = Stream()
    await service.Watch(health_pb2.HealthCheckRequest(service=""), stream)
    assert stream.sent == [NOT_SERVING]


async def test_a_cancelled_watch_leaves_nothing_running():
    """The client going away cancels the Watch and its inner task."""
    service = HealthService()
    stream = Stream()
    watch = asyncio.create_task(
        service.Watch(health_pb2.HealthCheckRequest(service=""), stream)
    )
    await stream.wrote.wait()
    before = len(asyncio.all_tasks())
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    assert watch.cancelled()
    assert len(asyncio.all_tasks()) < before
