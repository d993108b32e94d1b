"""
Usage metering over a real Lake: exact counts per tenant and operation, one count
per logical operation however often it was retried, counts that survive a restart,
tenant isolation of GetUsage, and ``lake usage --json``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from dependency_injector import providers
from google.protobuf import json_format

from lake.api.auth import hash_token
from lake.errors import StoreUnavailableError
from lake.v1 import (
    health_pb2,
    health_pb2_grpc,
    lake_pb2,
    lake_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.api.conftest import (
    TOKENS,
    api_container,
    auth,
    running_container,
    running_lake,
)
from tests.api.test_cli_client import lake

ADMIN = auth("token-admin")
# A read token of tenant-b, beside the conftest's tokens.
WITH_READER = {
    hash_token(t): grant
    for t, grant in {
        **TOKENS,
        "token-b-read": {"tenant": "tenant-b", "scope": "read"},
    }.items()
}
UPSERT = lake_pb2.UpsertFeaturesRequest(
    features=[
        lake_pb2.Feature(id="f1", lon=1, lat=1),
        lake_pb2.Feature(id="f2", lon=2, lat=2),
    ]
)
NEAREST = lake_pb2.NearestRequest(lon=0, lat=0, k=5)
NOW_US = int(time.time()) * 1_000_000


async def usage(channel: grpc.aio.Channel, token: str = "token-admin", **request: Any):
    stub = usage_pb2_grpc.UsageStub(channel)
    reply = await stub.GetUsage(
        usage_pb2.GetUsageRequest(**request), metadata=auth(token)
    )
    return {(r.tenant, r.operation): r for r in reply.rows}


async def test_two_tenants_counted_exactly(lake_settings):
    """Calls, failures by code, items, message bytes and database time per tenant
    and operation, exactly as sent; the read flushes this instance first."""
    async with running_lake(lake_settings) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Upsert(UPSERT, metadata=auth("token-a"))
        answers = [
            await spatial.Nearest(NEAREST, metadata=auth("token-a")) for _ in range(3)
        ]
        for _ in range(2):
            await spatial.Nearest(NEAREST, metadata=auth("token-b"))
        bad = lake_pb2.NearestRequest(lon=500, lat=0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spatial.Nearest(bad, metadata=auth("token-b"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        rows = await usage(channel)
    assert set(rows) == {
        ("tenant-a", "UpsertFeatures"),
        ("tenant-a", "FeaturesNearest"),
        ("tenant-b", "FeaturesNearest"),
    }
    upsert = rows["tenant-a", "UpsertFeatures"]
    assert (upsert.calls, dict(upsert.failures), upsert.items_in, upsert.items_out) == (
        1, {}, 2, 0,
    )  # fmt: skip
    assert upsert.bytes_in == UPSERT.ByteSize()
    assert upsert.bytes_out == lake_pb2.UpsertFeaturesResponse(upserted=2).ByteSize()
    assert upsert.db_ms > 0
    near_a = rows["tenant-a", "FeaturesNearest"]
    assert (near_a.calls, near_a.items_in, near_a.items_out) == (3, 0, 6)
    assert near_a.bytes_in == 3 * NEAREST.ByteSize()
    assert near_a.bytes_out == sum(a.ByteSize() for a in answers)
    near_b = rows["tenant-b", "FeaturesNearest"]
    assert (near_b.calls, dict(near_b.failures), near_b.items_out) == (
        3, {"INVALID_ARGUMENT": 1}, 0,
    )  # fmt: skip
    assert near_b.bytes_in == 2 * NEAREST.ByteSize() + bad.ByteSize()


async def test_a_retried_operation_counts_once(lake_settings):
    """The manager retries a transient store failure inside one call: usage shows
    one call, no failure, the items once."""
    container = api_container(lake_settings)
    attempts: list[int] = []

    class FailsOnce:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        async def upsert(self, tenant: str, features: Any) -> int:
            attempts.append(1)
            if len(attempts) == 1:
                msg = "database connection failed"
                raise StoreUnavailableError(msg)
            return int(await self._inner.upsert(tenant, features))

    real = container.spatial.cls
    container.spatial.override(
        providers.Singleton(
            lambda db, events: FailsOnce(real(db, events=events)),
            container.database,
            container.events,
        )
    )
    async with running_container(container) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        assert (await spatial.Upsert(UPSERT, metadata=auth("token-a"))).upserted == 2
        rows = await usage(channel)
    assert len(attempts) == 2
    row = rows["tenant-a", "UpsertFeatures"]
    assert (row.calls, dict(row.failures), row.items_in) == (1, {}, 2)


async def test_counts_survive_a_restart(lake_settings):
    """Stopping Lake flushes what it counted; a new Lake on the same database
    reports exactly those counts, and adds its own."""
    async with running_lake(lake_settings) as (_, _, channel):
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        for i in range(4):
            write = lake_pb2.WritePointsRequest(
                metric="cpu", timestamps_us=[NOW_US + i], values=[1.0]
            )
            await series.Write(write, metadata=auth("token-a"))
    async with running_lake(lake_settings) as (_, _, channel):
        rows = await usage(channel)
        assert (
            rows["tenant-a", "WritePoints"].calls,
            rows["tenant-a", "WritePoints"].items_in,
        ) == (4, 4)
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        write = lake_pb2.WritePointsRequest(
            metric="cpu", timestamps_us=[NOW_US + 9], values=[2.0]
        )
        await series.Write(write, metadata=auth("token-a"))
        rows = await usage(channel)
    assert rows["tenant-a", "WritePoints"].calls == 5


async def test_a_tenant_reads_only_its_own_usage(lake_settings):
    """A read token sees its tenant's usage; naming another tenant is
    PERMISSION_DENIED; an admin names any tenant, or none for all."""
    async with running_lake(lake_settings, tokens=WITH_READER) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Nearest(NEAREST, metadata=auth("token-a"))
        await spatial.Nearest(NEAREST, metadata=auth("token-b"))

        own = await usage(channel, "token-b-read")
        assert set(own) == {("tenant-b", "FeaturesNearest")}
        assert set(await usage(channel, "token-b-read", tenant="tenant-b")) == set(own)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await usage(channel, "token-b-read", tenant="tenant-a")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert set(await usage(channel, tenant="tenant-b")) == set(own)
        assert len(await usage(channel)) == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await usage(channel, "token-admin", tenant="Not A Tenant")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
async def test_lake_usage_json(lake_settings):
    """lake usage --json after a restart: one object per tenant and operation,
    summed, exactly the calls the first Lake served."""
    async with running_lake(lake_settings) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Upsert(UPSERT, metadata=auth("token-a"))
        await spatial.Nearest(NEAREST, metadata=auth("token-b"))
    async with running_lake(lake_settings) as (server, _, _):
        where = ["--address", server.address, "--token", "token-admin"]
        code, out, err = await lake("usage", "--json", "--since", "2h", *where)
        assert code == 0, err
        entries = json.loads(out)
        assert [(e["tenant"], e["operation"], e["calls"]) for e in entries] == [
            ("tenant-a", "UpsertFeatures", 1),
            ("tenant-b", "FeaturesNearest", 1),
        ]
        keys = {"tenant", "operation", "calls", "failures", "items_in", "items_out"}
        keys |= {"bytes_in", "bytes_out", "db_ms"}
        assert all(set(e) == keys for e in entries)
        assert entries[0]["items_in"] == 2
        code, out, err = await lake("usage", "--tenant", "tenant-b", *where)
        assert code == 0, err
        assert "FeaturesNearest" in out
        assert "UpsertFeatures" not in out
        code, _, err = await lake(
            "usage", "--tenant", "tenant-a", "--address", server.address,
            "--token", "token-b",
        )  # fmt: skip
        assert code == 1
        assert "PERMISSION_DENIED" in err


async def test_status_shows_what_waits_to_be_flushed(lake_settings):
    """lake status: rows held in memory until a flush stores them."""
    async with running_lake(lake_settings) as (_, _, channel):
        health = health_pb2_grpc.LakeHealthStub(channel)

        async def metering() -> dict[str, Any]:
            reply = await health.GetStatus(
                health_pb2.GetStatusRequest(), metadata=ADMIN
            )
            figures: dict[str, Any] = json_format.MessageToDict(reply.status)
            return dict(figures["metering"])

        assert await metering() == {"rows": 0, "dropped": 0, "flush_failing": 0}
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Nearest(NEAREST, metadata=auth("token-a"))
        await spatial.Nearest(NEAREST, metadata=auth("token-b"))
        assert (await metering())["rows"] == 2
        await usage(channel)
        assert (await metering())["rows"] == 0
