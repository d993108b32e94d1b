"""
The stream peer (change events from the outbox) down, silent or cut mid-reply (F15
for the relay): writes are still acknowledged, a relay round ends within the call
timeout, and once the peer is back every event arrives (at least once; the peer
drops redeliveries by event id).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator

import pytest

from lake.container import aresolve, create_container
from lake.health import Status
from lake.manager import ServiceManager
from lake.mesh.peers import PeerServer, StreamPeer
from lake.operations import Point, WritePoints
from tests.faults.conftest import T0
from tests.faults.proxy import FaultProxy
from tests.waiting import eventually

SLACK = 2.0
WRITES = 5


@pytest.fixture
async def stream() -> AsyncIterator[PeerServer]:
    server = PeerServer(StreamPeer())
    await server.start()
    yield server
    await server.stop(None)


@pytest.fixture
async def stream_proxy(stream) -> AsyncIterator[FaultProxy]:
    host, port = stream.address.rsplit(":", 1)
    async with FaultProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
async def relaying(proxied_settings, stream_proxy) -> AsyncIterator[ServiceManager]:
    """Lake recording change events for a stream peer reached through the proxy
    (no relay worker: the test runs the rounds)."""
    settings = copy.deepcopy(proxied_settings)
    settings["mesh"]["peers"] = {"stream": stream_proxy.address}
    manager: ServiceManager = await aresolve(create_container(settings).manager)
    await manager.start()
    try:
        yield manager
    finally:
        await stream_proxy.enable()
        await manager.stop()


async def write_some(manager: ServiceManager) -> None:
    for i in range(WRITES):
        ts = T0.replace(microsecond=i)
        assert await manager.coordinate(WritePoints("t1", "m", [Point(ts, 1.0)])) == 1


def delivered(stream: PeerServer) -> int:
    assert isinstance(stream.peer, StreamPeer)
    return len({e["event_id"] for e in stream.peer.events})


async def _drained(manager: ServiceManager) -> bool:
    report = await manager.deliver_events()
    return not report.failed


@pytest.mark.parametrize("fault", ["down", "blackhole"])
async def test_stream_peer_down_or_silent_events_wait_then_arrive(
    relaying, stream_proxy, stream, fault
):
    """Writes are acknowledged while the peer is away; a relay round fails within
    the call timeout (no hang) and mesh.stream is DEGRADED; back, the event of
    every acknowledged write arrives, and is kept once."""
    await write_some(relaying)  # the channel connects on the first round below
    assert (await relaying.deliver_events()).delivered == WRITES
    if fault == "down":
        await stream_proxy.disable()
    else:
        stream_proxy.blackhole()
    await write_some(relaying)
    started = time.monotonic()
    report = await relaying.deliver_events()
    assert report.failed
    assert time.monotonic() - started < 1.0 + SLACK  # mesh.call_timeout + slack
    health = await relaying.health()
    assert health.component("mesh.stream").status is Status.DEGRADED
    assert health.ready
    await stream_proxy.enable()
    await eventually(lambda: _drained(relaying), within=10, every=0.1)
    assert delivered(stream) == 2 * WRITES  # one event per acknowledged write
    assert isinstance(stream.peer, StreamPeer)
    assert len(stream.peer.events) == 2 * WRITES  # each once


async def test_stream_reply_cut_redelivers_at_least_once(
    relaying, stream_proxy, stream
):
    """The peer took the batch but its reply was cut: the round fails, the events
    stay pending and are sent again; the peer sees them twice and keeps them once."""
    await write_some(relaying)
    assert (await relaying.deliver_events()).delivered == WRITES
    await write_some(relaying)
    stream_proxy.cut_after(5, once=True)
    report = await relaying.deliver_events()
    assert report.failed
    assert stream_proxy.stats.cuts == 1
    await eventually(lambda: _drained(relaying), within=10, every=0.1)
    assert isinstance(stream.peer, StreamPeer)
    assert len(stream.peer.events) == 2 * WRITES  # each kept once
    assert stream.peer.received >= 2 * WRITES  # at least once
