"""
The time-series store on real PostgreSQL: partitions, retention, COPY writes, queries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lake.errors import ValidationError
from lake.models import Point
from lake.operations import AggregatePoints, QueryPoints, WritePoints
from lake.stores.timeseries import PgTimeSeriesStore

NOW = datetime.now(UTC)
DAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)  # today, 00:00 UTC
T0 = DAY - timedelta(days=1)  # yesterday: inside retention, partition exists


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_points_write_and_range_query(manager):
    """A range query returns [start, end) oldest first; rewriting replaces values."""
    points = [Point(T0 + timedelta(minutes=i), float(i)) for i in range(10)]
    await manager.coordinate(WritePoints("t1", "cpu.load", points, {"host": "a"}))
    await manager.coordinate(
        WritePoints(
            "t1", "cpu.load", [Point(T0 + timedelta(minutes=3), 33.0)], {"host": "a"}
        )
    )
    page = await manager.coordinate(
        QueryPoints(
            "t1",
            "cpu.load",
            T0 + timedelta(minutes=2),
            T0 + timedelta(minutes=5),
            {"host": "a"},
        )
    )
    assert [p.value for p in page.points] == [2.0, 33.0, 4.0]
    assert page.points[0].ts == T0 + timedelta(minutes=2)
    assert page.points[0].tags == {"host": "a"}
    assert page.next_cursor is None
    other = await manager.coordinate(
        QueryPoints("t1", "cpu.load", T0, T0 + timedelta(hours=1), {"host": "b"})
    )
    assert other.points == []


async def test_tag_filter_selects_series_by_containment(manager):
    """Tags filter series by containment; no filter reads every series."""
    for host, dc in (("a", "eu"), ("b", "eu"), ("c", "us")):
        await manager.coordinate(
            WritePoints("t1", "rps", [Point(T0, 1.0)], {"host": host, "dc": dc})
        )
    eu = await manager.coordinate(
        QueryPoints("t1", "rps", T0, T0 + timedelta(hours=1), {"dc": "eu"})
    )
    assert sorted(p.tags["host"] for p in eu.points) == ["a", "b"]
    every = await manager.coordinate(
        QueryPoints("t1", "rps", T0, T0 + timedelta(hours=1))
    )
    assert len(every.points) == 3


async def test_paging_walks_every_point_once(manager):
    """Pages of a bounded size chain by cursor through all points, none twice."""
    for host in ("a", "b"):
        points = [Point(T0 + timedelta(seconds=i), float(i)) for i in range(25)]
        await manager.coordinate(WritePoints("t1", "m", points, {"host": host}))
    seen, cursor, pages = [], None, 0
    while True:
        page = await manager.coordinate(
            QueryPoints("t1", "m", T0, T0 + timedelta(hours=1), limit=10, cursor=cursor)
        )
        pages += 1
        assert len(page.points) <= 10
        seen += [(p.tags["host"], p.ts) for p in page.points]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 5
    assert len(seen) == 50 == len(set(seen))


async def test_forged_cursor_is_refused(manager):
    """A cursor Lake did not issue, or one altered, names the cursor field."""
    await manager.coordinate(
        WritePoints(
            "t1", "m", [Point(T0 + timedelta(seconds=i), 1.0) for i in range(3)]
        )
    )
    page = await manager.coordinate(
        QueryPoints("t1", "m", T0, T0 + timedelta(hours=1), limit=1)
    )
    assert page.next_cursor is not None
    tampered = (
        page.next_cursor[:-2]
        + ("A" if page.next_cursor[-2] != "A" else "B")
        + page.next_cursor[-1]
    )
    for forged in ("not-a-cursor", tampered, "eyJzIjoxLCJ0IjoiMjAyNiJ9"):
        with pytest.raises(ValidationError, match=r"^cursor: "):
            await manager.coordinate(
                QueryPoints("t1", "m", T0, T0 + timedelta(hours=1), cursor=forged)
            )


async def test_retried_batch_never_duplicates(manager, container):
    """A batch written twice, or one repeating a timestamp, stores each point once."""
    points = [Point(T0 + timedelta(seconds=i), 1.0) for i in range(300)]
    for _ in range(2):
        await manager.coordinate(WritePoints("t1", "req", points))
    await manager.coordinate(
        WritePoints("t1", "req", [Point(T0, 5.0), Point(T0, 6.0)])  # last one wins
    )
    db = await container.database()
    async with db.transaction("t1") as conn:
        total = await conn.fetchval("SELECT count(*) FROM ts_data")
        first = await conn.fetchval("SELECT value FROM ts_data WHERE ts = $1", T0)
    assert total == 300
    assert first == 6.0


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        ("avg", [1.5, 5.5]),
        ("min", [0.0, 4.0]),
        ("max", [3.0, 7.0]),
        ("sum", [6.0, 22.0]),
        ("count", [4.0, 4.0]),
        ("last", [3.0, 7.0]),
    ],
)
async def test_bucketed_aggregation(manager, fn, expected):
    """date_bin buckets of 4 minutes over 8 one-minute points, each function."""
    points = [Point(T0 + timedelta(minutes=i), float(i)) for i in range(8)]
    await manager.coordinate(WritePoints("t1", "temp", points, {"room": "1"}))
    await manager.coordinate(
        WritePoints("t1", "temp", [Point(T0, 100.0)], {"room": "2"})
    )
    buckets = await manager.coordinate(
        AggregatePoints(
            "t1",
            "temp",
            T0,
            T0 + timedelta(minutes=8),
            bucket=timedelta(minutes=4),
            fn=fn,
            tags={"room": "1"},
        )
    )
    assert [b.start for b in buckets] == [T0, T0 + timedelta(minutes=4)]
    assert [b.value for b in buckets] == expected
    assert [b.count for b in buckets] == [4, 4]


async def test_partitions_are_created_ahead_of_the_data(manager, container):
    """Start-up creates today's partition and the configured days ahead."""
    series = await container.series()
    days = set(await series.partitions())
    ahead = {(NOW + timedelta(days=i)).date() for i in range(3)}  # future_days = 2
    assert ahead <= days


async def test_retention_drops_whole_partitions(container, manager):
    """Advancing the clock past retention drops old day partitions, not rows."""
    db = await container.database()
    clock = Clock(NOW)
    store = PgTimeSeriesStore(db, retention_days=3, future_days=1, clock=clock)
    for back in range(3):  # points on today, yesterday, the day before
        await store.write("t1", "m", {}, [Point(NOW - timedelta(days=back), 1.0)])
    before = set(await store.partitions())
    clock.now = NOW + timedelta(days=3)  # the two older days now lie wholly past it
    report = await store.maintain()
    after = set(await store.partitions())
    expired = {(NOW - timedelta(days=b)).date() for b in (1, 2)}
    assert expired <= before
    assert not expired & after
    assert sorted(report.dropped) == sorted(f"ts_data_p{d:%Y%m%d}" for d in expired)
    async with db.transaction("t1") as conn:
        remaining = await conn.fetchval("SELECT count(*) FROM ts_data")
        deleted = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
            " WHERE relname LIKE 'ts_data_p%'"
        )
    assert remaining == 1
    assert deleted == 0


@pytest.mark.parametrize(
    ("points", "field", "problem"),
    [
        ([Point(datetime(2026, 1, 1), 1.0)], "points[0].ts", "time zone"),
        ([Point(T0, float("nan"))], "points[0].value", "finite"),
        ([Point(T0, float("inf"))], "points[0].value", "finite"),
        (
            [Point(T0, 1.0), Point(NOW - timedelta(days=400), 1.0)],
            "points[1].ts",
            "retention",
        ),
        ([Point(NOW + timedelta(days=30), 1.0)], "points[0].ts", "future"),
        ([], "points", "empty"),
    ],
)
async def test_bad_points_name_the_field_and_write_nothing(
    manager, container, points, field, problem
):
    """Naive, non-finite, expired or far-future points are refused whole."""
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(WritePoints("t1", "m", points))
    assert info.value.field == field
    assert problem in info.value.problem
    db = await container.database()
    async with db.transaction("t1") as conn:
        assert await conn.fetchval("SELECT count(*) FROM ts_data") == 0


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (QueryPoints("t1", "m", T0 + timedelta(hours=1), T0), "start"),
        (QueryPoints("t1", "m", T0 - timedelta(days=400), T0), "end"),
        (QueryPoints("t1", "m", T0, T0 + timedelta(hours=1), limit=0), "limit"),
        (
            AggregatePoints(
                "t1", "m", T0, T0 + timedelta(days=30), timedelta(seconds=1)
            ),
            "bucket",
        ),
        (
            AggregatePoints(
                "t1",
                "m",
                T0,
                T0 + timedelta(hours=1),
                timedelta(minutes=1),
                fn="median",
            ),
            "fn",
        ),
    ],
)
async def test_bad_queries_name_the_field(manager, op, field):
    """Inverted or oversized ranges, bad limits and unknown functions are refused."""
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(op)
    assert info.value.field == field


async def test_upkeep_works_on_a_pool_of_one(lake_settings, manager):
    """Partition upkeep needs one connection at a time, so a pool of one suffices."""
    from lake.resources.postgres import open_pg_pool
    from lake.stores.database import Database

    pg = lake_settings["postgres"]
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"], max_size=1) as pool:
        store = PgTimeSeriesStore(Database(pool, acquire_timeout=0.5))
        report = await store.maintain()
    assert report.dropped == []
