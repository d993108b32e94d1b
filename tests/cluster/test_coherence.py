"""
Read-your-writes across instances: a write acknowledged by one instance is read
by the others at once, even with their cached reads warm.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.cluster.cluster import auth, pinned_channel, status

pytestmark = pytest.mark.asyncio(loop_scope="package")

# Each instance reads at most 3 times per round per route, so 20 rounds stay
# within a route's first 64 calls, which always go through the cache (see
# RoutePolicy): every read below is a cache lookup.
ROUNDS = 20
TOKEN = auth("token-ryw")
NEAREST = lake_pb2.NearestRequest(lon=0, lat=0, k=1)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def feature(value: int) -> lake_pb2.UpsertFeaturesRequest:
    properties = struct_pb2.Struct()
    properties.update({"v": value})
    return lake_pb2.UpsertFeaturesRequest(
        features=[lake_pb2.Feature(id="f", lon=0, lat=0, properties=properties)]
    )


def point(value: int) -> lake_pb2.WritePointsRequest:
    at = int(T0.timestamp()) * 1_000_000
    return lake_pb2.WritePointsRequest(
        metric="ryw", timestamps_us=[at], values=[float(value)]
    )


def query() -> lake_pb2.QueryPointsRequest:
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(T0 - timedelta(minutes=1))
    end.FromDatetime(T0 + timedelta(minutes=1))
    return lake_pb2.QueryPointsRequest(metric="ryw", start=start, end=end)


class Node:
    """The stubs of one instance, through a channel to it alone."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.spatial = lake_pb2_grpc.SpatialStub(channel)
        self.series = lake_pb2_grpc.TimeSeriesStub(channel)

    async def read(self) -> tuple[int, int]:
        """The value the feature and the point hold, as this instance reads them."""
        found, points = await asyncio.gather(
            self.spatial.Nearest(NEAREST, metadata=TOKEN, timeout=10),
            self.series.Query(query(), metadata=TOKEN, timeout=10),
        )
        [match] = found.matches
        [series] = points.series
        return int(match.feature.properties["v"]), int(series.values[0])

    async def hits(self) -> int:
        return int((await status(self.channel))["cache"]["hits"])

    async def write(self, value: int) -> None:
        await self.spatial.Upsert(feature(value), metadata=TOKEN, timeout=10)
        await self.series.Write(point(value), metadata=TOKEN, timeout=10)


async def test_a_write_on_one_instance_is_read_on_the_others_at_once(cluster):
    """20 rounds: every instance reads (its cache warms on the old value), one
    instance writes (each in turn), the two others read at once, twice (a load,
    then a cache hit): the new value, every time, for a feature and a
    time-series point."""
    async with AsyncExitStack() as stack:
        nodes = [
            Node(await stack.enter_async_context(pinned_channel(address)))
            for address in cluster.addresses
        ]
        await nodes[0].write(0)
        hits = [await n.hits() for n in nodes]
        stale = []
        for value in range(1, ROUNDS + 1):
            warm = await asyncio.gather(*(n.read() for n in nodes))
            assert warm == [(value - 1, value - 1)] * len(nodes)
            writer = nodes[value % len(nodes)]
            await writer.write(value)
            others = [n for n in nodes if n is not writer]
            seen = await asyncio.gather(*(n.read() for n in others))
            stale += [(value, s) for s in seen if s != (value, value)]
            # Read again: now from the cache each just filled.
            again = await asyncio.gather(*(n.read() for n in others))
            stale += [(value, s) for s in again if s != (value, value)]
        assert stale == []
        # The second reads were answered from the cache, on every instance.
        served = [await n.hits() - h for n, h in zip(nodes, hits, strict=True)]
        assert all(s >= ROUNDS for s in served), served
