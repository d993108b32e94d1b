"""
The usage meter and its flusher with an in-memory store: hourly rows per tenant,
operation and code; batches that keep their id until stored; a lost reply that
does not double count; bounded memory; database time charged to the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from lake.errors import StoreUnavailableError
from lake.flusher import UsageFlusher
from lake.manager import State
from lake.metering import (
    OK,
    Batch,
    Meter,
    UsageRow,
    UsageSummary,
    close_charge,
    current_charge,
    open_charge,
    timed_db,
)

HOUR = 1_764_237_600  # 2025-11-27T10:00:00Z


class Clock:
    def __init__(self, now: float = HOUR + 5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeUsageStore:
    """Adds each batch id once, like usage_batches; may fail before or after."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str, datetime, str], int] = {}
        self.ids: set[str] = set()
        self.fail_before = 0  # calls that fail without storing
        self.lose_reply = 0  # calls that store, then fail (the reply is lost)
        self.calls = 0

    async def add(self, batch: Batch) -> bool:
        self.calls += 1
        if self.fail_before:
            self.fail_before -= 1
            msg = "database is unavailable"
            raise StoreUnavailableError(msg)
        fresh = batch.id not in self.ids
        if fresh:
            self.ids.add(batch.id)
            for r in batch.rows:
                key = (r.tenant, r.operation, r.bucket, r.code)
                self.totals[key] = self.totals.get(key, 0) + r.calls
        if self.lose_reply:
            self.lose_reply -= 1
            msg = "database connection failed"
            raise StoreUnavailableError(msg)
        return fresh

    async def read(self, **_: Any) -> list[UsageSummary]:
        return []

    async def purge(self, older_than_days: int) -> int:
        return 0


class Running:
    state = State.RUNNING


def flusher(meter: Meter, store: FakeUsageStore) -> UsageFlusher:
    return UsageFlusher(meter, lambda: store, Running(), interval=10.0)


def calls(store: FakeUsageStore) -> int:
    return sum(store.totals.values())


def test_rows_per_tenant_operation_hour_and_code() -> None:
    """Calls add up per (tenant, operation, hour, code), hours in UTC."""
    clock = Clock()
    meter = Meter(clock=clock, instance="i1")
    meter.record("a", "WritePoints", OK, items_in=3, bytes_in=10, db_s=0.0015)
    meter.record("a", "WritePoints", OK, items_in=2, bytes_in=5)
    meter.record("a", "WritePoints", "INVALID_ARGUMENT", bytes_in=7)
    meter.record("b", "WritePoints", OK)
    clock.now = HOUR + 3600
    meter.record("a", "WritePoints", OK)
    batch = meter.batch()
    assert batch is not None
    assert batch.id == "i1:1"
    assert batch.rows[0] == UsageRow(
        bucket=datetime(2025, 11, 27, 10, tzinfo=UTC),
        tenant="a",
        operation="WritePoints",
        code="INVALID_ARGUMENT",
        calls=1,
        bytes_in=7,
    )
    ok = batch.rows[1]
    assert (ok.code, ok.calls, ok.items_in, ok.bytes_in, ok.db_us) == (
        OK,
        2,
        5,
        15,
        1500,
    )
    assert batch.rows[2].bucket == datetime(2025, 11, 27, 11, tzinfo=UTC)
    assert [r.tenant for r in batch.rows] == ["a", "a", "a", "b"]
    assert batch.calls == 5


def test_a_batch_keeps_its_id_until_acknowledged() -> None:
    """Counts made meanwhile wait for the next batch, with the next id."""
    meter = Meter(instance="i1")
    meter.record("a", "Op", OK)
    first = meter.batch()
    meter.record("a", "Op", OK)
    assert meter.batch() is first
    assert first is not None
    meter.acknowledge(first)
    second = meter.batch()
    assert second is not None
    assert (second.id, second.calls) == ("i1:2", 1)
    meter.acknowledge(second)
    assert meter.batch() is None


def test_memory_is_bounded() -> None:
    """Past max_rows a call opening a new row is dropped (logged once); calls of
    rows already held still count."""
    meter = Meter(max_rows=2)
    with capture_logs() as logs:
        for tenant in ("a", "b", "c", "d"):
            meter.record(tenant, "Op", OK)
        meter.record("a", "Op", OK)
    assert (meter.rows, meter.dropped) == (2, 2)
    assert [e["event"] for e in logs] == ["usage_rows_full"]
    batch = meter.batch()
    assert batch is not None
    assert batch.calls == 3
    assert meter.dropped == 0


async def test_a_lost_reply_does_not_double_count() -> None:
    """The store committed but the reply was lost: the next flush writes the same
    batch, which the store adds once, then the newer counts."""
    meter, store = Meter(), FakeUsageStore()
    worker = flusher(meter, store)
    for _ in range(3):
        meter.record("a", "Op", OK)
    store.lose_reply = 1
    assert not await worker.flush_quietly()
    assert calls(store) == 3
    meter.record("a", "Op", OK)
    assert await worker.flush_quietly()
    assert calls(store) == 4
    assert store.calls == 3  # the lost batch again, then the new one
    assert meter.rows == 0


async def test_a_failed_flush_keeps_the_counts() -> None:
    """While the store fails the counts stay in memory; logged once, and once
    when it recovers."""
    meter, store = Meter(), FakeUsageStore()
    worker = flusher(meter, store)
    meter.record("a", "Op", OK)
    store.fail_before = 2
    with capture_logs() as logs:
        assert not await worker.flush_quietly()
        meter.record("b", "Op", OK)
        assert not await worker.flush_quietly()
        assert calls(store) == 0
        assert await worker.flush_quietly()
    assert calls(store) == 2
    assert [e["event"] for e in logs] == ["usage_flush_failed", "usage_flush_recovered"]


async def test_flushes_only_while_running() -> None:
    """Before start or after a failed start, nothing touches the store."""

    class Stopped:
        state = State.STOPPED

    meter, store = Meter(), FakeUsageStore()
    meter.record("a", "Op", OK)
    worker = UsageFlusher(meter, lambda: store, Stopped(), interval=10.0)
    await worker.drain()
    assert store.calls == 0
    assert meter.rows == 1


async def test_concurrent_flushes_write_each_batch_once() -> None:
    """The periodic flush, a read's flush and the drain may meet: one at a time."""
    meter, store = Meter(), FakeUsageStore()
    worker = flusher(meter, store)
    for i in range(100):
        meter.record(f"t{i % 7}", "Op", OK)
    await asyncio.gather(*(worker.flush() for _ in range(5)))
    assert (calls(store), store.calls) == (100, 1)


async def test_database_time_is_charged_to_the_open_call() -> None:
    """timed_db adds the time inside each transaction to the call's charge; a
    transaction outside a metered call is not timed."""

    @asynccontextmanager
    async def transaction() -> AsyncIterator[str]:
        await asyncio.sleep(0.01)
        yield "conn"

    timed = timed_db(transaction)
    async with timed() as conn:
        assert conn == "conn"
    assert current_charge() is None
    charge, token = open_charge()
    try:
        async with timed():
            pass
        with pytest.raises(KeyError):
            async with timed():
                raise KeyError
    finally:
        close_charge(token)
    assert charge.db_s >= 0.02
    assert current_charge() is None


def test_every_data_method_is_metered_as_its_operation() -> None:
    """Each lake.v1 data method bills as the operation it builds."""
    from lake import operations
    from lake.api.metering import METERED
    from lake.v1 import lake_pb2

    methods = {
        f"/{service.full_name}/{method.name}"
        for service in lake_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METERED) == methods
    assert all(hasattr(operations, m.operation) for m in METERED.values())


async def test_the_worker_flushes_every_interval() -> None:
    """Started, the flusher writes the counts within an interval or so; stopped
    in the middle of nothing, it leaves nothing behind."""
    from tests.waiting import eventually

    meter, store = Meter(), FakeUsageStore()
    worker = UsageFlusher(meter, lambda: store, Running(), interval=0.01)
    worker.start()
    try:
        meter.record("a", "Op", OK)
        await eventually(lambda: calls(store) == 1)
        meter.record("a", "Op", OK)
        await eventually(lambda: calls(store) == 2)
    finally:
        await worker.stop()
    assert meter.rows == 0
