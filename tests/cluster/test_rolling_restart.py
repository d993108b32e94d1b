"""
A rolling restart under steady load: each instance in turn is stopped with
SIGTERM and started again on its port while a client keeps calling; the client
(round robin, the documented retry policy) sees no failed call and loses no
acknowledged write.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.cluster.cluster import auth, balanced_channel, served
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(240)]

TOKEN = auth("token-roll")
WRITERS, READERS = 3, 3


class Load:
    """Writers and readers calling back to back over one balanced channel,
    each call with a 15 s deadline, until stopped."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.spatial = lake_pb2_grpc.SpatialStub(channel)
        self.acknowledged: list[str] = []
        self.failures: list[tuple[str, str, str | None]] = []
        self.calls: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            *(asyncio.create_task(self._write(w)) for w in range(WRITERS)),
            *(asyncio.create_task(self._read()) for _ in range(READERS)),
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, writer: int) -> None:
        n = 0
        while not self._stop.is_set():
            fid = f"w{writer}-{n}"
            n += 1
            feature = lake_pb2.Feature(id=fid, lon=(n % 360) - 180, lat=writer)
            request = lake_pb2.UpsertFeaturesRequest(features=[feature])
            try:
                await self.spatial.Upsert(request, metadata=TOKEN, timeout=15)
            except grpc.aio.AioRpcError as exc:
                self.failures.append(("write", exc.code().name, exc.details()))
            else:
                self.acknowledged.append(fid)
            self.calls["write"] += 1

    async def _read(self) -> None:
        request = lake_pb2.NearestRequest(lon=0, lat=0, k=5)
        while not self._stop.is_set():
            try:
                await self.spatial.Nearest(request, metadata=TOKEN, timeout=15)
            except grpc.aio.AioRpcError as exc:
                self.failures.append(("read", exc.code().name, exc.details()))
            self.calls["read"] += 1


async def test_rolling_restart_under_load_fails_no_call(cluster):
    """Instances 1, 2, 3 in turn: SIGTERM, exit 0, started again on the same
    port, ready, serving the client's calls again before the next one stops.
    The client saw 0 failed calls; every acknowledged write is stored once,
    with one change event each, delivered to the stream peer."""
    async with balanced_channel(cluster.addresses) as channel:
        load = Load(channel)
        load.start()
        try:
            await eventually(lambda: load.calls.total() >= 50, within=30)
            for instance in cluster.instances:
                assert await instance.terminate() == 0, instance.log_text()
                instance.start()
                await instance.ready()

                async def back(address: str = instance.address) -> bool:
                    [calls] = await served([address], "UpsertFeatures")
                    return calls > 0

                # The client's channel reconnects on its own (its reconnect
                # backoff) and round robin brings calls back to the instance.
                await eventually(back, within=60, every=0.2)
        finally:
            await load.stop()
    assert load.failures == [], (dict(load.calls), load.failures[:10])
    assert len(set(load.acknowledged)) == len(load.acknowledged)
    rows = await cluster.fetch("SELECT id FROM features WHERE tenant_id = 'roll'")
    assert sorted(r["id"] for r in rows) == sorted(load.acknowledged)
    events = await cluster.fetch(
        "SELECT event_id::text AS id FROM outbox WHERE tenant_id = 'roll'"
    )
    expected = {r["id"] for r in events}

    def delivered() -> bool:
        return set(cluster.stream.arrived("roll")) >= expected

    await eventually(delivered, within=30, every=0.1)
    # Every write recorded exactly one event (a retried write that had been
    # applied would have recorded two).
    assert len(expected) == len(events) == len(load.acknowledged)
    assert set(cluster.stream.arrived("roll")) == expected
