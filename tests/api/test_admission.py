"""
No starvation from outside: token-less streams, API floods and huge messages leave
probes and authenticated calls answered.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.container import aresolve
from lake.v1 import health_pb2 as lake_health_pb2
from lake.v1 import health_pb2_grpc as lake_health_grpc
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import api_container, auth, running_container, running_lake
from tests.api.test_api import NOW, expect, us
from tests.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING


async def open_watch(channel: grpc.aio.Channel, service: str = ""):
    """A Watch stream and whether the server admitted it (sent a first status)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service)
    )
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    else:
        return call, True
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return call, False


async def test_token_less_watch_streams_cannot_starve_probes_or_calls(lake_settings):
    """500 Watch streams: at most the stream budget is admitted; the rest is not."""
    async with running_lake(
        lake_settings, max_concurrent_rpcs=16, max_open_streams=40
    ) as (server, _, channel):
        address = server.address
        # A channel of its own per client: one connection (one peer) each.
        local = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.insecure_channel(address, options=local) for _ in range(25)
        ]
        try:
            watches = await asyncio.gather(
                *(open_watch(ch) for ch in channels for _ in range(20))
            )
            admitted = sum(ok for _, ok in watches)
            assert len(watches) == 500
            assert 0 < admitted <= 40
            # Per connection: never more than max_streams_per_peer (8).
            assert server.admission.streams_by_peer.most_common(1)[0][1] <= 8

            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "lake.ready"):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert reply.status == SERVING
            spatial = lake_pb2_grpc.SpatialStub(channel)
            found = await spatial.Nearest(
                lake_pb2.NearestRequest(lon=0.0, lat=0.0, k=3),
                metadata=auth(),
                timeout=5,
            )
            assert list(found.matches) == []
            status = await lake_health_grpc.LakeHealthStub(channel).GetStatus(
                lake_health_pb2.GetStatusRequest(),
                metadata=auth("token-admin"),
                timeout=5,
            )
            counts = json_format.MessageToDict(status.status)["admission"]
            assert counts["open_streams"] == admitted
            assert counts["refused_streams"] == 500 - admitted
        finally:
            for call, _ in watches:
                call.cancel()
            for ch in channels:
                await ch.close(None)


async def test_api_calls_beyond_the_budget_are_refused_at_once(lake_settings):
    """Past max_concurrent_rpcs an API call gets RESOURCE_EXHAUSTED; probes pass."""
    async with running_lake(lake_settings, max_concurrent_rpcs=2) as (
        server,
        _,
        channel,
    ):
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        hold = asyncio.Event()

        async def quiet():
            await hold.wait()
            yield lake_pb2.WritePointsRequest()

        held = [series.WriteStream(quiet(), metadata=auth()) for _ in range(2)]
        spatial = lake_pb2_grpc.SpatialStub(channel)
        request = lake_pb2.NearestRequest(lon=0.0, lat=0.0, k=1)

        await eventually(lambda: server.admission.api_calls == 2)
        details = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            spatial.Nearest(request, metadata=auth(), timeout=5),
        )
        assert "busy" in details
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="lake.ready"), timeout=5
        )
        assert reply.status == SERVING
        for call in held:
            call.cancel()
        await eventually(lambda: server.admission.api_calls == 0)
        await spatial.Nearest(request, metadata=auth(), timeout=5)


async def test_huge_messages_keep_readiness_and_report_loop_lag(lake_settings):
    """Ten 250,000-point messages at once: refused, lake.ready SERVING throughout."""
    async with running_lake(lake_settings) as (_, _, channel):
        seen: list[int] = []
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="lake.ready")
        )
        first = await watch.read()
        seen.append(first.status)

        async def record() -> None:
            while True:
                reply = await watch.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                seen.append(reply.status)

        recorder = asyncio.create_task(record())
        n = 250_000
        start = us(NOW)
        big = lake_pb2.WritePointsRequest(
            metric="cpu",
            timestamps_us=[start + i for i in range(n)],
            values=[1.0] * n,
        )
        assert big.ByteSize() < 4 * 1024 * 1024
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        results = await asyncio.gather(
            *(series.Write(big, metadata=auth(), timeout=30) for _ in range(10)),
            return_exceptions=True,
        )
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
        report = await lake_health_grpc.LakeHealthStub(channel).GetHealth(
            lake_health_pb2.GetHealthRequest(), timeout=5
        )
        names = {c.name: c for c in report.components}
        assert "event_loop" in names
        assert report.ready
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await recorder
        assert seen
        assert all(s == SERVING for s in seen), seen
        # The loop's lag is its own, non-critical component: lag never fails
        # readiness, and never a database check.
        assert not names["event_loop"].critical
        assert names["postgres"].status == lake_health_pb2.STATUS_UP


async def test_256_concurrent_reads_never_switch_the_cache_off(lake_settings):
    """256 calls at once on a pool of 8 Redis connections: calls wait or miss, the
    cache counts no error and is never skipped (no MaxConnectionsError cooldown)."""
    lake_settings["redis"]["max_connections"] = 8
    async with running_lake(lake_settings) as (_, manager, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(
                features=[
                    lake_pb2.Feature(id=f"f{i}", lon=i * 0.01, lat=45.0)
                    for i in range(50)
                ]
            ),
            metadata=auth(),
        )

        async def read(i: int):
            request = lake_pb2.NearestRequest(lon=(i % 16) * 0.01, lat=45.0, k=3)
            return await spatial.Nearest(request, metadata=auth(), timeout=30)

        for _ in range(2):
            replies = await asyncio.gather(*(read(i) for i in range(256)))
            assert all(len(r.matches) == 3 for r in replies)
        stats = (await manager.status()).cache
        assert stats is not None
        assert stats["errors"] == 0, stats
        assert stats["skipping"] == 0, stats
        assert stats["hits"] + stats["misses"] > 0, stats


async def test_largest_vector_upserts_leave_the_event_loop_free(lake_settings):
    """Four ~4 MB Upserts (a million values each) at once: converted and checked off
    the event loop (one worker thread), so its lag stays far under what converting
    them on the loop costs (~200 ms here; ~50 ms off it, this test's client
    included) and readiness holds."""
    lake_settings["health"]["loop_lag_threshold_ms"] = 120.0
    async with running_lake(lake_settings) as (_, manager, channel):
        vectors = lake_pb2_grpc.VectorsStub(channel)
        await vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="big", dim=1000, metric=lake_pb2.METRIC_L2
            ),
            metadata=auth(),
        )
        await manager.health()  # a fresh lag window before the load
        big = lake_pb2.UpsertVectorsRequest(
            collection="big",
            items=[
                lake_pb2.VectorItem(id=f"v{i}", values=[(i % 7) * 0.1] * 1000)
                for i in range(1000)
            ],
        )
        assert big.ByteSize() < 4 * 1024 * 1024
        # Each its own request: the same vectors again are an idempotent upsert.
        replies = await asyncio.gather(
            *(vectors.Upsert(big, metadata=auth(), timeout=60) for _ in range(4))
        )
        assert [r.upserted for r in replies] == [1000] * 4
        report = await manager.health()
        loop = report.component("event_loop")
        assert loop.status.name == "UP", loop
        assert report.ready


async def test_interceptors_wrap_each_method_once_not_on_every_call(lake_settings):
    """grpc runs every interceptor on every call; the server has one, a chain of
    the layers (admission, auth, metering, decode guard), which builds each
    method's wrapped handler once and reuses it (a dict lookup per call)."""
    container = api_container(lake_settings)
    async with running_container(container) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        request = lake_pb2.NearestRequest(lon=0.0, lat=45.0, k=1)
        (chain,) = await aresolve(container.interceptors)
        assert [type(layer).__name__ for layer in chain.layers] == [
            "AdmissionInterceptor",
            "AuthInterceptor",
            "MeteringInterceptor",
            "DecodeGuard",
        ]
        await spatial.Nearest(request, metadata=auth())
        built = chain._wrapped.built
        for _ in range(20):
            await spatial.Nearest(request, metadata=auth())
        assert chain._wrapped.built == built
