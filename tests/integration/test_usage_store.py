"""
The usage table on a real PostgreSQL: a batch added twice counts once; batches of
several instances add up; hours fold into days; failures fold into their row;
lake_app cannot read usage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from lake.container import aresolve
from lake.errors import ValidationError
from lake.metering import OK, Batch, UsageRow
from lake.stores.usage import PgUsageStore

T0 = datetime(2026, 11, 26, 22, tzinfo=UTC)


def row(tenant: str, hour: int, calls: int, code: str = OK) -> UsageRow:
    return UsageRow(
        bucket=T0 + timedelta(hours=hour),
        tenant=tenant,
        operation="WritePoints",
        code=code,
        calls=calls,
        items_in=calls * 10,
        bytes_in=calls * 100,
        db_us=calls * 1000,
    )


@pytest.fixture
async def store(container, manager) -> PgUsageStore:
    return PgUsageStore(await aresolve(container.database))


async def test_a_batch_added_twice_counts_once(store):
    """The second add of one batch id (a retry after a lost reply) adds nothing;
    another instance's batch adds to the same rows."""
    first = Batch("i1:1", (row("a", 0, 3),))
    assert await store.add(first)
    assert not await store.add(first)
    assert await store.add(Batch("i2:1", (row("a", 0, 2), row("b", 0, 1))))
    found = await store.read(
        tenant="a", since=T0, until=T0 + timedelta(hours=1), granularity="hour",
        max_rows=100,
    )  # fmt: skip
    [summary] = found
    assert (summary.calls, summary.items_in, summary.bytes_in, summary.db_us) == (
        5, 50, 500, 5000,
    )  # fmt: skip


async def test_hours_fold_into_days_and_failures_into_rows(store):
    """DAY sums the hours of each UTC day in range; failed calls count in calls
    and, by code, in failures."""
    rows = (
        row("a", 0, 1),
        row("a", 1, 2),
        row("a", 2, 4),
        row("a", 2, 1, "UNAVAILABLE"),
        row("a", 3, 8),
    )
    await store.add(Batch("i1:1", rows))
    since, until = T0 + timedelta(minutes=30), T0 + timedelta(hours=3)
    hours = await store.read(
        tenant=None, since=since, until=until, granularity="hour", max_rows=100
    )
    assert [(h.start.hour, h.calls) for h in hours] == [(22, 1), (23, 2), (0, 5)]
    assert hours[2].failures == {"UNAVAILABLE": 1}
    days = await store.read(
        tenant=None, since=since, until=until, granularity="day", max_rows=100
    )
    assert [(d.start.day, d.calls, d.failures) for d in days] == [
        (26, 3, {}),
        (27, 5, {"UNAVAILABLE": 1}),
    ]
    with pytest.raises(ValidationError, match="more than 2 rows"):
        await store.read(
            tenant=None, since=since, until=until, granularity="hour", max_rows=2
        )


async def test_the_tenant_role_cannot_read_usage(store, lake_settings):
    """Usage is operator data: lake_app has no grant on it."""
    await store.add(Batch("i1:1", (row("a", 0, 1),)))
    conn = await asyncpg.connect(
        lake_settings["postgres"]["dsn"], password=lake_settings["postgres"]["password"]
    )
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE lake_app")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM usage_hourly")
    finally:
        await conn.close()
