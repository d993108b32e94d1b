"""
F2 and F21 through the gRPC face: what a caller and a readiness probe see when
PostgreSQL or Redis goes away under a serving Lake (each reached through a fault
proxy), and that both come back without a restart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth, running_lake
from tests.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def write_request(i: int) -> lake_pb2.WritePointsRequest:
    return lake_pb2.WritePointsRequest(
        metric="f21",
        timestamps_us=[int(T0.timestamp() * 1_000_000) + i],
        values=[1.0],
    )


async def status(channel: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(reply.status)


async def _writes(series: Any, i: int) -> bool:
    try:
        await series.Write(write_request(i), metadata=auth(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    return True


async def _becomes(channel: grpc.aio.Channel, service: str, want: int) -> bool:
    return await status(channel, service) == want


async def test_f02_f21_postgres_down_unavailable_and_not_ready(
    proxied_settings, pg_proxy
):
    """PostgreSQL refused: writes get UNAVAILABLE within their deadline,
    lake.ready and lake.postgres go NOT_SERVING while liveness ("") stays
    SERVING; back: ready again and writes succeed, same process."""
    async with running_lake(proxied_settings) as (_, _, channel):
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        await series.Write(write_request(0), metadata=auth(), timeout=5)
        await pg_proxy.disable()
        for i in range(1, 4):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await series.Write(write_request(i), metadata=auth(), timeout=1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 1.0 + 2.0
        await eventually(lambda: _becomes(channel, "lake.ready", NOT_SERVING))
        assert await status(channel, "lake.postgres") == NOT_SERVING
        assert await status(channel, "") == SERVING  # liveness: no restart wanted
        # Once PostgreSQL's breaker opens, calls are answered at once with a
        # pushback the client's retry policy obeys.
        pushback = None
        for i in range(10, 60):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await series.Write(write_request(i), metadata=auth(), timeout=1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            metadata: Any = info.value.trailing_metadata() or ()
            trailers = {str(k): str(v) for k, v in metadata}
            if "grpc-retry-pushback-ms" in trailers:
                pushback = int(trailers["grpc-retry-pushback-ms"])
                assert "circuit open" in (info.value.details() or "")
                break
        assert pushback is not None
        assert (
            0
            < pushback
            <= 1000 * proxied_settings["protection"]["breaker"]["open_wait_s"]
        )
        await pg_proxy.enable()
        await eventually(lambda: _becomes(channel, "lake.ready", SERVING))
        # Ready while the breaker still waits (lake.postgres DEGRADED "circuit
        # open"): a client retrying after the pushback gets through within it.
        await eventually(lambda: _writes(series, 9))


async def test_f21_redis_down_stays_serving(proxied_settings, redis_proxy):
    """Redis refused: lake.redis NOT_SERVING, but lake.ready and "" stay SERVING
    and reads and writes succeed."""
    async with running_lake(proxied_settings) as (_, _, channel):
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        await redis_proxy.disable()
        await eventually(lambda: _becomes(channel, "lake.redis", NOT_SERVING))
        assert await status(channel, "lake.ready") == SERVING
        assert await status(channel, "") == SERVING
        await series.Write(write_request(0), metadata=auth(), timeout=5)
        start, end = Timestamp(), Timestamp()
        start.FromDatetime(T0)
        end.FromDatetime(T0 + timedelta(hours=1))
        page = await series.Query(
            lake_pb2.QueryPointsRequest(metric="f21", start=start, end=end),
            metadata=auth(),
            timeout=5,
        )
        assert [len(s.timestamps_us) for s in page.series] == [1]
        # (Redis's breaker opening and the cache being skipped: F12.)
        await redis_proxy.enable()
        await eventually(lambda: _becomes(channel, "lake.redis", SERVING))
