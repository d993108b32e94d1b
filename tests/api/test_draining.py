"""
Stopping one of several instances: health says NOT_SERVING while Lake keeps
serving for ``grpc.drain_s``, then health Watch streams end, then the server
stops; a client that watches health and balances over the instances sees no
failed call.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.bootstrap import Lake
from lake.container import aresolve
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import api_container, auth, running_lake
from tests.cluster.cluster import balanced_channel
from tests.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NEAR = lake_pb2.NearestRequest(lon=0, lat=0, k=1)


async def test_stop_drains_then_ends_the_health_watches(lake_settings):
    """On stop, a Watch of lake.ready sees NOT_SERVING while calls are still
    served (the drain); then the Watch ends with OK: an open Watch no longer
    holds the stop for the whole grace (30 s here) to be cancelled at its end."""
    lake_settings["grpc"]["drain_s"] = 2.0
    container = api_container(lake_settings)
    container.lake.add_kwargs(grace=30.0)
    lake: Lake = await aresolve(container.lake)
    await lake.start()
    assert lake.server is not None
    try:
        async with grpc.aio.insecure_channel(lake.server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="lake.ready")
            )
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(lake.stop())
            assert (await watch.read()).status == NOT_SERVING
            found = await lake_pb2_grpc.SpatialStub(channel).Nearest(
                NEAR, metadata=auth(), timeout=5
            )
            assert list(found.matches) == []
            assert await watch.read() is grpc.aio.EOF  # type: ignore[attr-defined]
            assert await watch.code() == grpc.StatusCode.OK
            await stopping
    finally:
        await lake.stop()


async def test_a_watching_client_sees_no_failure_when_an_instance_stops(
    lake_settings,
):
    """Two instances, 16 callers round robin over both with health checking and
    the retry policy; one instance stops (drain 0.5 s) under that load: every
    call succeeds. (Without the drain, grpcio cancels the calls already on their
    way when it stops: CANCELLED, a few per stop.)"""
    lake_settings["grpc"]["drain_s"] = 0.5
    stopping = api_container(lake_settings)
    lake: Lake = await aresolve(stopping.lake)
    await lake.start()
    assert lake.server is not None
    codes: Counter[str] = Counter()
    done = asyncio.Event()
    try:
        async with running_lake(lake_settings) as (other, _, _):
            addresses = [lake.server.address, other.address]
            async with balanced_channel(addresses) as channel:
                spatial = lake_pb2_grpc.SpatialStub(channel)

                async def call() -> None:
                    while not done.is_set():
                        try:
                            await spatial.Nearest(NEAR, metadata=auth(), timeout=10)
                        except grpc.aio.AioRpcError as exc:
                            codes[exc.code().name] += 1
                        else:
                            codes["OK"] += 1

                callers = [asyncio.create_task(call()) for _ in range(16)]
                await eventually(lambda: codes.total() >= 200, within=30)
                await lake.stop()
                stopped_at = codes.total()
                await eventually(lambda: codes.total() >= stopped_at + 200, within=30)
                done.set()
                await asyncio.gather(*callers)
    finally:
        done.set()
        await lake.stop()
    assert set(codes) == {"OK"}, codes
