"""
A mesh peer (cortex, the embedder) down, slow or failing under a running Lake
(F15-F17): callers get UNAVAILABLE or DEADLINE_EXCEEDED within their deadline, the
peer is never given more time than the caller has left, and each request costs the
peer a bounded number of attempts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from lake.api.errors import status_of
from lake.container import aresolve, create_container
from lake.deadline import deadline_scope
from lake.errors import LakeError
from lake.health import Status
from lake.manager import ServiceManager
from lake.mesh.peers import CortexPeer, PeerServer
from lake.mesh.v1 import peers_pb2
from lake.operations import Collection, CreateCollection, SearchText
from tests.faults.proxy import FaultProxy

SLACK = 2.0


class ScriptedCortex(CortexPeer):
    """Cortex that answers ``code`` (UNAVAILABLE) to its first ``failures`` calls
    (all of them with -1), counting every call."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(dim=8)
        self.failures = failures
        self.calls = 0
        self.code = grpc.StatusCode.UNAVAILABLE

    async def Embed(
        self, request: peers_pb2.EmbedRequest, context: Any
    ) -> peers_pb2.EmbedResponse:
        if self.failures < 0 or self.calls < self.failures:
            self.calls += 1
            await context.abort(self.code, "scripted failure")
        return await super().Embed(request, context)  # counts the call too


@pytest.fixture
async def scripted() -> AsyncIterator[PeerServer]:
    server = PeerServer(ScriptedCortex())
    await server.start()
    yield server
    await server.stop(None)


@pytest.fixture
async def peer_proxy(scripted) -> AsyncIterator[FaultProxy]:
    host, port = scripted.address.rsplit(":", 1)
    async with FaultProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
async def meshed(proxied_settings, peer_proxy) -> AsyncIterator[ServiceManager]:
    """Lake (PostgreSQL and Redis through their proxies) whose cortex peer is the
    scripted one, through ``peer_proxy``; a collection "notes" of dim 8."""
    settings = copy.deepcopy(proxied_settings)
    settings["mesh"]["peers"] = {"cortex": peer_proxy.address}
    manager: ServiceManager = await aresolve(create_container(settings).manager)
    await manager.start()
    try:
        await manager.coordinate(CreateCollection("t1", Collection("notes", 8)))
        yield manager
    finally:
        await peer_proxy.enable()
        await manager.stop()


def search(n: int = 0) -> SearchText:
    return SearchText("t1", "notes", f"hello {n}")


async def failing(manager, n: int, seconds: float) -> tuple[grpc.StatusCode, float]:
    started = time.monotonic()
    with deadline_scope(seconds), pytest.raises(LakeError) as info:
        await manager.coordinate(search(n))
    return status_of(info.value)[0], time.monotonic() - started


# --- F15: peer down or slow -----------------------------------------------------------


async def test_f15_peer_down_is_unavailable_within_the_deadline(meshed, peer_proxy):
    await meshed.coordinate(search())  # connected once
    await peer_proxy.disable()
    for n in range(3):
        code, took = await failing(meshed, n, 1.0)
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert took < 1.0 + SLACK
    report = await meshed.health()
    assert report.component("mesh.cortex").status is Status.DEGRADED
    assert report.ready  # a peer down degrades Lake; only text operations fail


@pytest.mark.parametrize("fault", ["blackhole", "slow handler"])
async def test_f15_silent_or_slow_peer_gets_no_more_than_the_callers_time(
    meshed, peer_proxy, scripted, fault
):
    """A black-holed link or a handler slower than the deadline: DEADLINE_EXCEEDED
    (or UNAVAILABLE) within deadline + slack; the deadline the peer saw is never
    more than the caller's."""
    await meshed.coordinate(search())
    if fault == "blackhole":
        peer_proxy.blackhole()
    else:
        scripted.peer.delay = 3.0
    for n in range(2):
        code, took = await failing(meshed, n, 0.5)
        assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert took < 0.5 + SLACK
    scripted.peer.delay = 0.0
    seen = [d for d in scripted.peer.deadlines[1:] if d is not None]
    assert all(d <= 0.5 for d in seen), seen
    assert scripted.peer.deadlines[0] is not None
    assert scripted.peer.deadlines[0] <= 1.0  # mesh.call_timeout without a deadline


async def test_f15_peer_reply_cut_is_retried_or_unavailable(meshed, peer_proxy):
    """The peer's connection cut mid-reply: the request is retried on a new
    connection and succeeds, or ends UNAVAILABLE; never a wrong answer."""
    await meshed.coordinate(search())
    outcomes = set()
    for n in range(5):
        peer_proxy.cut_after(10 + 13 * n, once=True)
        try:
            with deadline_scope(3.0):
                matches = await meshed.coordinate(search(n))
        except LakeError as exc:
            outcomes.add(status_of(exc)[0])
        else:
            assert matches == []  # nothing stored in "notes": an empty, whole answer
            outcomes.add(grpc.StatusCode.OK)
    assert outcomes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert peer_proxy.stats.cuts >= 1


# --- F16/F17: peer failing ------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
async def test_f16_peer_failing_k_times_bounded_attempts(meshed, scripted, code):
    """UNAVAILABLE (or RESOURCE_EXHAUSTED) twice, then fine: the request succeeds
    on Lake's own retries (no channel retries on top), three calls at the peer."""
    peer = scripted.peer
    peer.failures, peer.calls, peer.code = 2, 0, code
    with deadline_scope(5.0):
        assert await meshed.coordinate(search()) is not None
    assert peer.calls == 3


async def test_f17_peer_always_unavailable_amplification_is_bounded(meshed, scripted):
    """A peer failing every call: each request costs the peer at most
    operations.attempts calls (never attempts x channel retries)."""
    peer = scripted.peer
    peer.failures, peer.calls = -1, 0
    requests = 10
    for n in range(requests):
        code, _ = await failing(meshed, n, 2.0)
        assert code == grpc.StatusCode.UNAVAILABLE
    # At least one call reached the peer (an open breaker may spare the rest).
    assert 1 <= peer.calls <= 3 * requests
    # Over a longer run the peer's breaker opens and the retry budget holds:
    # calls at the peer per request stay at or under 1.2 (F17's target).
    for n in range(requests, 100):
        code, _ = await failing(meshed, n, 2.0)
        assert code == grpc.StatusCode.UNAVAILABLE
    assert peer.calls / 100 <= 1.2, peer.calls
