"""
WriteStream is honest: one transaction per stream, counts of rows stored, and
streams that cannot outstay their welcome.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import grpc

from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth, running_lake
from tests.api.test_api import NOW, expect, stamp, us


def points(metric: str, first: int, n: int, *, value: float = 1.0):
    stamps = [NOW + timedelta(seconds=first + i) for i in range(n)]
    return lake_pb2.WritePointsRequest(
        metric=metric,
        tags={"host": "a"},
        timestamps_us=[us(t) for t in stamps],
        values=[value] * n,
    )


async def stored(series, metric: str) -> int:
    page = await series.Query(
        lake_pb2.QueryPointsRequest(
            metric=metric,
            start=stamp(NOW - timedelta(minutes=1)),
            end=stamp(NOW + timedelta(hours=1)),
            limit=10_000,
        ),
        metadata=auth(),
    )
    return sum(len(s.values) for s in page.series)


async def test_half_failed_stream_stores_nothing_and_says_where(api):
    """A good message then a NaN one: INVALID_ARGUMENT naming it, nothing stored."""

    async def messages():
        yield points("cpu", 0, 50)
        yield points("cpu", 100, 3, value=math.nan)

    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.series.WriteStream(messages(), metadata=auth()),
    )
    assert details.startswith("messages[1].values[0]:"), details
    assert await stored(api.series, "cpu") == 0


async def test_stream_commits_every_series_at_once(api):
    """Messages of two series commit together; written counts rows stored."""

    async def messages():
        yield points("cpu", 0, 5)
        yield points("mem", 0, 4)
        yield points("cpu", 5, 5)

    reply = await api.series.WriteStream(messages(), metadata=auth())
    assert (reply.written, reply.duplicates) == (14, 0)
    assert await stored(api.series, "cpu") == 10
    assert await stored(api.series, "mem") == 4


async def test_written_counts_rows_and_duplicates_apart(api):
    """Three points at one timestamp: one row written, two duplicates reported."""
    at = us(NOW)
    request = lake_pb2.WritePointsRequest(
        metric="dup", timestamps_us=[at, at, at], values=[1.0, 2.0, 3.0]
    )
    reply = await api.series.Write(request, metadata=auth())
    assert (reply.written, reply.duplicates) == (1, 2)

    async def messages():
        yield request

    streamed = await api.series.WriteStream(messages(), metadata=auth())
    assert (streamed.written, streamed.duplicates) == (1, 2)
    assert await stored(api.series, "dup") == 1


async def test_stream_past_its_point_cap_is_refused_whole(lake_settings):
    """A stream over limits.max_stream_points is refused and stores nothing."""
    lake_settings["limits"]["max_stream_points"] = 100
    async with running_lake(lake_settings) as (_, _, channel):
        series = lake_pb2_grpc.TimeSeriesStub(channel)

        async def messages():
            for i in range(3):
                yield points("cpu", i * 40, 40)

        details = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            series.WriteStream(messages(), metadata=auth()),
        )
        assert "100" in details
        assert await stored(series, "cpu") == 0


async def test_idle_stream_is_ended_and_stores_nothing(lake_settings):
    """A stream silent past the idle timeout ends DEADLINE_EXCEEDED, nothing kept."""
    async with running_lake(lake_settings, stream_idle_timeout=0.3) as (_, _, ch):
        series = lake_pb2_grpc.TimeSeriesStub(ch)
        never = asyncio.Event()

        async def messages():
            yield points("cpu", 0, 10)
            await never.wait()  # the client goes quiet and never closes
            yield points("cpu", 10, 10)

        details = await expect(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            series.WriteStream(messages(), metadata=auth(), timeout=30),
        )
        assert "nothing was stored" in details
        assert await stored(series, "cpu") == 0


async def test_stream_without_deadline_ends_at_the_server_maximum(lake_settings):
    """A stream with no client deadline is ended at grpc.max_deadline_s."""
    async with running_lake(
        lake_settings, max_deadline=0.5, stream_idle_timeout=10.0
    ) as (_, _, ch):
        series = lake_pb2_grpc.TimeSeriesStub(ch)
        never = asyncio.Event()

        async def messages():
            yield points("cpu", 0, 10)
            await never.wait()  # open, not idle-timed-out (10 s), no deadline
            yield points("cpu", 10, 10)

        details = await expect(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            series.WriteStream(messages(), metadata=auth()),
        )
        assert "outlived its deadline" in details
        assert await stored(series, "cpu") == 0


async def test_a_timestamp_repeated_across_messages_is_one_row(api):
    """The same series and timestamp in two messages: one row written, one duplicate,
    the later value kept."""
    at = us(NOW)

    async def messages():
        yield lake_pb2.WritePointsRequest(
            metric="rep", timestamps_us=[at], values=[1.0]
        )
        yield lake_pb2.WritePointsRequest(
            metric="rep", timestamps_us=[at], values=[2.0]
        )

    reply = await api.series.WriteStream(messages(), metadata=auth())
    assert (reply.written, reply.duplicates) == (1, 1)
    page = await api.series.Query(
        lake_pb2.QueryPointsRequest(
            metric="rep",
            start=stamp(NOW - timedelta(minutes=1)),
            end=stamp(NOW + timedelta(minutes=1)),
        ),
        metadata=auth(),
    )
    assert [list(s.values) for s in page.series] == [[2.0]]
