"""
Usage and quotas across instances: each instance meters and admits its own
calls, and the totals are those of one service.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import grpc
import pytest

from lake.v1 import (
    lake_pb2,
    lake_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.cluster.cluster import (
    auth,
    balanced_channel,
    lake,
    pinned_channel,
    served,
)
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="package")

TOKEN = auth("token-meter")
READS, BUDGET, WRITES = 15, 6, 4


async def refresh_quotas(address: str) -> None:
    """Quotas.Show makes the instance re-read the overrides at once (else it
    would within quotas.refresh_s)."""
    async with pinned_channel(address) as channel:
        await quotas_pb2_grpc.QuotasStub(channel).Show(
            quotas_pb2.ShowQuotasRequest(tenant="meter"),
            metadata=auth("token-admin"),
            timeout=10,
        )


async def totals(address: str) -> dict[str, tuple[int, dict[str, int]]]:
    """The meter tenant's calls and failures per operation, as one instance
    reads them from PostgreSQL (its own counts flushed first)."""
    async with pinned_channel(address) as channel:
        reply = await usage_pb2_grpc.UsageStub(channel).GetUsage(
            usage_pb2.GetUsageRequest(tenant="meter"), metadata=TOKEN, timeout=10
        )
    calls: Counter[str] = Counter()
    failures: dict[str, Counter[str]] = {}
    for row in reply.rows:
        calls[row.operation] += row.calls
        failures.setdefault(row.operation, Counter()).update(dict(row.failures))
    return {op: (calls[op], dict(failures[op])) for op in calls}


async def test_usage_and_a_read_quota_add_up_across_instances(cluster):
    """A read quota of 6 per window (lake quota set on one instance) is one
    budget for all three: 15 reads spread over them, exactly 6 OK. lake usage
    then counts every call each instance served: 15 reads (9 refused) and 4
    writes, whichever instance is asked."""
    first, *others = cluster.addresses
    code, _, err = await lake(
        "quota", "set", "--tenant", "meter", "--read-per-s", str(BUDGET / 60),
        "--address", first, "--token", "token-admin",
    )  # fmt: skip
    assert code == 0, err
    for address in others:
        await refresh_quotas(address)
    before = await served(cluster.addresses, "FeaturesNearest")
    async with balanced_channel(cluster.addresses) as channel:
        spatial = lake_pb2_grpc.SpatialStub(channel)
        feature = lake_pb2.Feature(id="m", lon=0, lat=0)
        for _ in range(WRITES):
            await spatial.Upsert(
                lake_pb2.UpsertFeaturesRequest(features=[feature]),
                metadata=TOKEN,
                timeout=10,
            )

        async def read() -> grpc.StatusCode:
            try:
                await spatial.Nearest(
                    lake_pb2.NearestRequest(lon=0, lat=0, k=1),
                    metadata=TOKEN,
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        codes = Counter(await asyncio.gather(*(read() for _ in range(READS))))
    after = await served(cluster.addresses, "FeaturesNearest")
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(spread) == READS
    assert all(n > 0 for n in spread), spread  # every instance took its share
    assert codes == {
        grpc.StatusCode.OK: BUDGET,
        grpc.StatusCode.RESOURCE_EXHAUSTED: READS - BUDGET,
    }
    expected = {
        "FeaturesNearest": (READS, {"RESOURCE_EXHAUSTED": READS - BUDGET}),
        "UpsertFeatures": (WRITES, {}),
    }

    async def counted() -> bool:
        return await totals(first) == expected

    # The asked instance flushes its own counts; the others' arrive within
    # their flush interval (0.5 s here).
    await eventually(counted, within=20, every=0.2)
    for address in cluster.addresses:
        assert await totals(address) == expected
    code, out, err = await lake(
        "usage", "--json", "--tenant", "meter",
        "--address", others[-1], "--token", "token-admin",
    )  # fmt: skip
    assert code == 0, err
    assert {(e["operation"], e["calls"]) for e in json.loads(out)} == {
        ("FeaturesNearest", READS),
        ("UpsertFeatures", WRITES),
    }
