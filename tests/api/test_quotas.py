"""
Quotas through the API, on real PostgreSQL and Redis: rates shared by two
instances, the refusal's details, storage caps under concurrency, lake quota set
taking effect without a restart, and Redis lost.

Rates use a 60 s window (``quotas.window_s``) so that no budget refills while a
test runs: counts are exact whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from lake.health import Status
from lake.resources.embedded import EmbeddedRedis
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth, running_lake
from tests.api.test_cli_client import lake
from tests.waiting import eventually

NEAR = lake_pb2.NearestRequest(lon=0, lat=0, k=1)


def per_window(settings: dict[str, Any], calls: int, name: str = "read_per_s") -> None:
    """Allow ``calls`` calls per 60 s of ``name``'s class by default."""
    settings["quotas"]["window_s"] = 60
    settings["quotas"]["default"][name] = calls / 60
    # A loaded machine's 100 ms Redis stall would fail open (counted locally) and
    # blur the counts; a lost Redis still fails at once (connection refused).
    settings["redis"]["socket_timeout"] = 2.0


async def outcome(spatial: Any, token: str = "token-a") -> grpc.StatusCode:
    try:
        await spatial.Nearest(NEAR, metadata=auth(token))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_over_its_rate_a_tenant_is_refused_with_details(lake_settings):
    """The 6th read of 5 per window: RESOURCE_EXHAUSTED naming the quota, with
    QuotaFailure, RetryInfo and retry-after-ms; another tenant is unaffected."""
    per_window(lake_settings, 5)
    async with running_lake(lake_settings) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        for _ in range(5):
            await spatial.Nearest(NEAR, metadata=auth("token-a"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spatial.Nearest(NEAR, metadata=auth("token-a"))
        exc = info.value
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.details() == "quota read_per_s exceeded for tenant tenant-a"
        # grpc.aio.Metadata: (key, value) pairs (the stubs say otherwise).
        trailing: dict[str, Any] = dict(cast(Any, exc.trailing_metadata()))
        retry_ms = int(trailing["retry-after-ms"])
        assert 0 < retry_ms <= 60_000
        rich = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
        assert rich.details[0].Unpack(failure)
        assert rich.details[1].Unpack(retry)
        assert failure.violations[0].quota_id == "read_per_s"
        assert retry.retry_delay.ToMilliseconds() == retry_ms
        # Another tenant, and another class of the same tenant, go on.
        assert await outcome(spatial, "token-b") == grpc.StatusCode.OK
        upsert = lake_pb2.UpsertFeaturesRequest(
            features=[lake_pb2.Feature(id="f", lon=0, lat=0)]
        )
        assert (await spatial.Upsert(upsert, metadata=auth("token-a"))).upserted == 1


async def test_two_instances_share_one_budget(lake_settings):
    """Two Lakes on one database and Redis: 14 calls against 6 per window, spread
    over both, are answered OK exactly 6 times."""
    per_window(lake_settings, 6)
    async with (
        running_lake(lake_settings) as (_, _, one),
        running_lake(lake_settings) as (_, _, two),
    ):
        stubs = [lake_pb2_grpc.SpatialStub(c) for c in (one, two)]
        codes = [await outcome(stubs[i % 2]) for i in range(14)]
        assert codes.count(grpc.StatusCode.OK) == 6
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 8
        assert {codes[i] for i in range(0, 14, 2)} != {grpc.StatusCode.OK}


async def test_storage_cap_is_exact_under_concurrent_writers(lake_settings):
    """max_vectors 50, 20 writers of 5 new vectors at once: exactly 10 stored
    batches; replacing stored ids still passes at the cap; a delete frees room."""
    lake_settings["quotas"]["default"]["max_vectors"] = 50
    async with running_lake(lake_settings) as (_, _, channel):
        vectors = lake_pb2_grpc.VectorsStub(channel)
        await vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="c", dim=2, metric=lake_pb2.METRIC_L2
            ),
            metadata=auth(),
        )

        def batch(w: int) -> lake_pb2.UpsertVectorsRequest:
            items = [
                lake_pb2.VectorItem(id=f"{w}-{i}", values=[float(w), float(i)])
                for i in range(5)
            ]
            return lake_pb2.UpsertVectorsRequest(collection="c", items=items)

        refusals: set[str | None] = set()

        async def write(w: int) -> grpc.StatusCode:
            try:
                await vectors.Upsert(batch(w), metadata=auth())
            except grpc.aio.AioRpcError as exc:
                refusals.add(exc.details())
                return exc.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(write(w) for w in range(20)))
        assert codes.count(grpc.StatusCode.OK) == 10
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 10
        assert refusals == {"quota max_vectors exceeded for tenant tenant-a"}
        stored = [w for w, c in enumerate(codes) if c == grpc.StatusCode.OK]
        # At the cap: replacing stored vectors adds none and passes.
        await vectors.Upsert(batch(stored[0]), metadata=auth())
        assert await write(99) == grpc.StatusCode.RESOURCE_EXHAUSTED
        ids = [f"{stored[0]}-{i}" for i in range(5)]
        await vectors.Delete(
            lake_pb2.DeleteVectorsRequest(collection="c", ids=ids), metadata=auth()
        )
        assert await write(99) == grpc.StatusCode.OK
        found = await vectors.Search(
            lake_pb2.SearchVectorsRequest(collection="c", vector=[0, 0], k=100),
            metadata=auth(),
        )
        assert len(found.matches) == 50


async def test_other_caps_refuse_the_write_past_them(lake_settings):
    """max_collections 1: a second collection is refused, re-declaring the first
    is not; max_features 3: a batch past it is refused whole; max_points_per_day
    4: refused with a retry time (the UTC day's end)."""
    lake_settings["quotas"]["default"].update(
        max_collections=1, max_features=3, max_points_per_day=4
    )
    async with running_lake(lake_settings) as (_, _, channel):
        vectors = lake_pb2_grpc.VectorsStub(channel)
        spatial = lake_pb2_grpc.SpatialStub(channel)
        first = lake_pb2.CreateCollectionRequest(
            collection="a", dim=2, metric=lake_pb2.METRIC_L2
        )
        await vectors.CreateCollection(first, metadata=auth())
        await vectors.CreateCollection(first, metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await vectors.CreateCollection(
                lake_pb2.CreateCollectionRequest(
                    collection="b", dim=2, metric=lake_pb2.METRIC_L2
                ),
                metadata=auth(),
            )
        assert "max_collections" in (info.value.details() or "")

        def features(*ids: str) -> lake_pb2.UpsertFeaturesRequest:
            return lake_pb2.UpsertFeaturesRequest(
                features=[lake_pb2.Feature(id=i, lon=0, lat=0) for i in ids]
            )

        await spatial.Upsert(features("1", "2"), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spatial.Upsert(features("2", "3", "4"), metadata=auth())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await spatial.Upsert(features("1", "2", "3"), metadata=auth())  # one new
        found = await spatial.Nearest(
            lake_pb2.NearestRequest(lon=0, lat=0, k=10), metadata=auth()
        )
        assert sorted(m.feature.id for m in found.matches) == ["1", "2", "3"]

        series = lake_pb2_grpc.TimeSeriesStub(channel)
        now_us = int(time.time() * 1e6)

        def points(n: int, offset: int) -> lake_pb2.WritePointsRequest:
            stamps = [now_us - (offset + i) * 1000 for i in range(n)]
            return lake_pb2.WritePointsRequest(
                metric="m", timestamps_us=stamps, values=[1.0] * n
            )

        await series.Write(points(3, 0), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await series.Write(points(2, 10), metadata=auth())
        assert info.value.details() == (
            "quota max_points_per_day exceeded for tenant tenant-a"
        )
        trailing = dict(cast(Any, info.value.trailing_metadata()))
        assert 0 < int(trailing["retry-after-ms"]) <= 86_400_000
        await series.Write(points(1, 20), metadata=auth())


async def test_quota_set_counts_on_every_instance_without_restart(lake_settings):
    """lake quota set on one instance: the other refuses past the new rate within
    5 s; lake quota show reports it with the tenant's usage."""
    lake_settings["quotas"]["window_s"] = 60
    lake_settings["redis"]["socket_timeout"] = 2.0
    async with (
        running_lake(lake_settings) as (one, _, _),
        running_lake(lake_settings) as (_, _, two),
    ):
        spatial = lake_pb2_grpc.SpatialStub(two)
        assert await outcome(spatial, "token-b") == grpc.StatusCode.OK
        where = ["--address", one.address, "--token", "token-admin"]
        code, out, err = await lake(
            "quota", "set", "--tenant", "tenant-b", "--read-per-s", "0.05",
            "--max-vectors", "10", "--json", *where,
        )  # fmt: skip
        assert code == 0, err
        row = json.loads(out)
        assert row["overrides"] == {"max_vectors": 10.0, "read_per_s": 0.05}

        async def refused() -> bool:
            return await outcome(spatial, "token-b") == (
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )

        await eventually(refused, within=5.0, every=0.1)
        assert await outcome(spatial, "token-a") == grpc.StatusCode.OK

        code, out, err = await lake(
            "quota", "show", "--tenant", "tenant-b", "--json", *where
        )
        assert code == 0, err
        [shown] = json.loads(out)["tenants"]
        assert shown["effective"]["max_vectors"] == 10
        assert shown["effective"]["write_per_s"] == 0
        assert shown["usage"]["vectors"] == 0
        code, out, err = await lake("quota", "show", *where)
        assert "tenant-b" in out
        code, _, err = await lake(
            "quota", "set", "--tenant", "x", "--read-per-s", "1",
            "--address", one.address, "--token", "token-a",
        )  # fmt: skip
        assert code == 1
        assert "PERMISSION_DENIED" in err


async def test_redis_lost_quotas_go_local_and_health_says_so(lake_settings, tmp_path):
    """Redis stopped: calls are still counted (per instance, at the same rate) and
    health is DEGRADED "quotas local"; Redis back: shared again."""
    redis = EmbeddedRedis(tmp_path)
    end = redis.start()
    try:
        lake_settings["redis"].update(url=end.url, password=end.password)
        per_window(lake_settings, 3)
        async with running_lake(lake_settings) as (_, manager, channel):
            spatial = lake_pb2_grpc.SpatialStub(channel)
            assert await outcome(spatial) == grpc.StatusCode.OK
            redis.stop()

            async def local() -> bool:
                report = await manager.health()
                quotas = report.component("quotas")
                return quotas.status is Status.DEGRADED and quotas.reason == (
                    "quotas local"
                )

            await eventually(local)
            report = await manager.health()
            assert report.ready
            # The local bucket holds the same budget: 3 pass, the 4th is refused.
            codes = [await outcome(spatial) for _ in range(4)]
            assert codes == [grpc.StatusCode.OK] * 3 + [
                grpc.StatusCode.RESOURCE_EXHAUSTED
            ]
            redis.start()

            async def shared() -> bool:
                report = await manager.health()
                return report.component("quotas").status is Status.UP

            await eventually(shared)
    finally:
        redis.stop()


async def test_a_rate_of_20_per_second_holds_across_two_instances(lake_settings):
    """read_per_s 20 on two Lakes, asked as fast as they answer for 5 s: the calls
    accepted over both are within 20 % of 100; another tenant is never refused."""
    lake_settings["quotas"]["default"]["read_per_s"] = 20
    lake_settings["redis"]["socket_timeout"] = 2.0  # no fail-open on a slow CI
    async with (
        running_lake(lake_settings) as (_, _, one),
        running_lake(lake_settings) as (_, _, two),
    ):
        stubs = [lake_pb2_grpc.SpatialStub(c) for c in (one, two)]
        codes: list[grpc.StatusCode] = []
        others: list[grpc.StatusCode] = []
        ends = time.monotonic() + 5.0

        async def caller(i: int) -> None:
            while time.monotonic() < ends:
                codes.append(await outcome(stubs[i % 2]))

        async def other() -> None:
            while time.monotonic() < ends:
                others.append(await outcome(stubs[0], "token-b"))
                await asyncio.sleep(0.5)  # well under its own budget

        await asyncio.gather(*(caller(i) for i in range(8)), other())
        accepted = codes.count(grpc.StatusCode.OK)
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert 80 <= accepted <= 120, accepted
        assert len(codes) > 2 * accepted  # it was asked for far more
        assert set(others) == {grpc.StatusCode.OK}
