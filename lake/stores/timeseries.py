"""
Time-series store: series (metric + tags) and points, partitioned by day.

- Storage: ``ts_data`` is range-partitioned on ``ts``, one partition per UTC day.
  Partitions are created ahead of the data (by ``maintain()`` and on demand before a
  write) and retention drops whole expired partitions, never rows.
- Writes: COPY into a staging table, then one merge that is idempotent on
  (series, timestamp): a retried batch never duplicates a point.
- Reads: raw ranges paged by a signed cursor, and ``date_bin`` aggregations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from lake.errors import ValidationError
from lake.models import (
    Bucket,
    MaintenanceReport,
    Point,
    PointPage,
    SeriesPoint,
    series_scope,
)
from lake.stores.cursor import FORGED, CursorSigner
from lake.stores.database import Database, record_write
from lake.stores.quotas import UNLIMITED, CapsOf, charge

__all__ = ["MaintenanceReport", "PgTimeSeriesStore"]

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS lake_ts_stage"
    " (ts timestamptz, value double precision) ON COMMIT DELETE ROWS"
)
_STAGE_FAST = _STAGE + "; SAVEPOINT lake_fast_insert"
_INSERT = (
    "INSERT INTO ts_data (tenant_id, series_id, ts, value)"
    " SELECT $1, $2, ts, value FROM lake_ts_stage"
)
_UPSERT = " ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value"
# Between two series of one transaction: an empty stage and a fresh savepoint.
_NEXT_SERIES = "TRUNCATE lake_ts_stage; SAVEPOINT lake_fast_insert"
_PARTITION_LOCK = 0x6C616B74  # "lakt": one partition manager at a time
_AGGREGATES = {
    "avg": "avg(d.value)",
    "min": "min(d.value)",
    "max": "max(d.value)",
    "sum": "sum(d.value)",
    "count": "count(*)::double precision",
    "last": "(array_agg(d.value ORDER BY d.ts DESC))[1]",
}
_FILTER = (
    " FROM ts_data d JOIN ts_series s ON s.id = d.series_id"
    " WHERE d.tenant_id = $1 AND s.tenant_id = $1 AND s.metric = $2"
    " AND s.tags @> $3::jsonb AND d.ts >= $4 AND d.ts < $5"
)


def _tags_json(tags: Mapping[str, str]) -> str:
    # Sorted keys: one series has one canonical tag document.
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))


# One series' points to merge: metric, tags, (ts, value) records, first, last.
_Batch = tuple[str, Mapping[str, str], list[tuple[datetime, float]], datetime, datetime]


def _partition(day: date) -> str:
    return f"ts_data_p{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def _partitions(conn: Any) -> dict[date, str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = 'ts_data'::regclass"
    )
    return {
        datetime.strptime(r["relname"][-8:], "%Y%m%d").replace(tzinfo=UTC).date(): r[
            "relname"
        ]
        for r in rows
    }


def utcnow() -> datetime:
    """
    The current time in UTC.
    """
    return datetime.now(UTC)


class PgTimeSeriesStore:
    """
    Points in day partitions; a point written twice is stored once.
    """

    def __init__(
        self,
        db: Database,
        *,
        retention_days: int = 30,
        future_days: int = 2,
        cursor_key: str = "",
        clock: Callable[[], datetime] = utcnow,
        events: bool = False,
        caps: CapsOf | None = None,
    ) -> None:
        self._db = db
        self._caps = caps or (lambda _: UNLIMITED)
        self._events = events
        self._retention = timedelta(days=retention_days)
        self._future = timedelta(days=future_days)
        self._cursors = CursorSigner(cursor_key)
        self._clock = clock
        self._series: dict[tuple[str, str, str], int] = {}
        self._days: set[date] | None = None

    # --- partitions ---------------------------------------------------------------

    async def partitions(self) -> dict[date, str]:
        """
        The existing partitions by day.
        """
        async with self._db.transaction() as conn:
            return await _partitions(conn)

    async def _ensure_days(self, days: set[date]) -> list[str]:
        if self._days is None:
            self._days = set(await self.partitions())
        missing = sorted(days - self._days)
        if not missing:
            return []
        created = []
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for day in missing:
                name = _partition(day)
                status = await conn.fetchval("SELECT to_regclass($1) IS NULL", name)
                if status:
                    start, end = _day_start(day), _day_start(day + timedelta(days=1))
                    await conn.execute(
                        f"CREATE TABLE {name} PARTITION OF ts_data FOR VALUES"
                        f" FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
                    created.append(name)
        self._days.update(missing)
        return created

    async def maintain(self) -> MaintenanceReport:
        """
        Create partitions for today and the days ahead; drop expired ones whole.
        """
        now = self._clock()
        ahead = {(now + timedelta(days=i)).date() for i in range(self._future.days + 1)}
        created = await self._ensure_days(ahead)
        horizon = (now - self._retention).date()
        dropped = []
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            # Listed on this connection: a second one from the pool while holding
            # this one could wait out the acquire timeout on a small pool.
            for day, name in sorted((await _partitions(conn)).items()):
                # A partition is expired once its whole day is older than retention.
                if day < horizon:
                    await conn.execute(f"DROP TABLE {name}")
                    dropped.append(name)
        if self._days is not None:
            self._days -= {d for d in self._days if d < horizon}
        return MaintenanceReport(created=created, dropped=dropped)

    # --- writes -------------------------------------------------------------------

    def _check_window(
        self, points: list[Point], first: datetime, last: datetime, prefix: str = ""
    ) -> None:
        now = self._clock()
        oldest, newest = now - self._retention, now + self._future
        if oldest <= first and last < newest:
            return
        for i, p in enumerate(points):
            where = f"{prefix}points[{i}].ts"
            if p.ts < oldest:
                msg = f"older than the retention period ({self._retention.days} days)"
                raise ValidationError(where, msg)
            if p.ts >= newest:
                msg = f"more than {self._future.days} days in the future"
                raise ValidationError(where, msg)

    async def _series_id(self, tenant: str, metric: str, tags: str) -> int:
        key = (tenant, metric, tags)
        sid = self._series.get(key)
        if sid is None:
            async with self._db.transaction(tenant) as conn:
                sid = await conn.fetchval(
                    "INSERT INTO ts_series (tenant_id, metric, tags)"
                    " VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING RETURNING id",
                    tenant,
                    metric,
                    tags,
                ) or await conn.fetchval(
                    "SELECT id FROM ts_series WHERE tenant_id = $1 AND metric = $2"
                    " AND tags = $3::jsonb",
                    tenant,
                    metric,
                    tags,
                )
            self._series[key] = int(sid)
        return int(sid)

    async def write(
        self, tenant: str, metric: str, tags: Mapping[str, str], points: list[Point]
    ) -> int:
        """
        Write ``points``: COPY to staging, one idempotent merge; last value wins.

        Returns:
            The rows stored: one per distinct timestamp (a timestamp repeated in
            the batch is stored once, its last value winning).

        Raises:
            ValidationError: a point lies outside [now - retention, now + ahead).
        """
        return await self.write_many(tenant, [(metric, tags, points)])

    async def write_many(
        self,
        tenant: str,
        writes: Sequence[tuple[str, Mapping[str, str], list[Point]]],
    ) -> int:
        """
        Write several series' points in ONE transaction: all of them or none.

        Returns:
            The rows stored across all series (distinct timestamps per series).

        Raises:
            ValidationError: a point lies outside the window; its field is
                ``writes[i].points[j].ts`` when there are several writes.
        """
        # One batch per series, in order: a timestamp repeated in two messages of
        # a stream is one row (the later value), counted once.
        grouped: dict[tuple[str, str], _Batch] = {}
        days: set[date] = set()
        for i, (metric, tags, points) in enumerate(writes):
            stamps = [p.ts for p in points]
            first, last = min(stamps), max(stamps)
            prefix = f"writes[{i}]." if len(writes) > 1 else ""
            self._check_window(points, first, last, prefix)
            start_day = first.astimezone(UTC).date()
            span = (last.astimezone(UTC).date() - start_day).days
            days |= {start_day + timedelta(days=d) for d in range(span + 1)}
            records = list(zip(stamps, (p.value for p in points), strict=True))
            key = (metric, _tags_json(tags))
            if key in grouped:
                _, _, earlier, first0, last0 = grouped[key]
                grouped[key] = (
                    metric,
                    tags,
                    earlier + records,
                    min(first0, first),
                    max(last0, last),
                )
            else:
                grouped[key] = (metric, tags, records, first, last)
        # In key order: two writes naming the same series lock their rows (the
        # scope's cache generation, the points' index entries) in the same order,
        # so they queue rather than deadlock (PostgreSQL would take its whole
        # deadlock_timeout, a second, to find that and fail one of them).
        batches = [grouped[key] for key in sorted(grouped)]
        await self._ensure_days(days)
        sids = [
            await self._series_id(tenant, metric, _tags_json(tags))
            for metric, tags, *_ in batches
        ]
        stored = 0
        async with self._db.transaction(tenant, prelude=_STAGE_FAST) as conn:
            for i, (sid, (metric, tags, records, first, last)) in enumerate(
                zip(sids, batches, strict=True)
            ):
                if i:  # the staging table and savepoint serve one series at a time
                    await conn.execute(_NEXT_SERIES)
                stored += await self._merge(conn, tenant, sid, records)
                event = {
                    "metric": metric,
                    "tags": dict(tags),
                    "count": len(records),
                    "first": first.isoformat(),
                    "last": last.isoformat(),
                }
                await record_write(
                    conn,
                    tenant,
                    series_scope(metric),
                    ("points.written", event) if self._events else None,
                )
            await charge(conn, tenant, self._caps(tenant), points=stored)
        self._db.wrote("ts_data", stored)
        return stored

    @staticmethod
    async def _merge(
        conn: Any, tenant: str, sid: int, records: list[tuple[datetime, float]]
    ) -> int:
        # New points (the common case) go in with a plain INSERT, about twice as
        # fast as ON CONFLICT's speculative insertion. A batch that repeats stored
        # points (a retry, a correction) or repeats a timestamp within itself rolls
        # back to the savepoint (taken in the transaction's first round trip) and
        # merges, one row per timestamp, the last one winning. Returns the rows
        # stored: one per distinct timestamp.
        columns = ["ts", "value"]
        await conn.copy_records_to_table(
            "lake_ts_stage", records=records, columns=columns
        )
        try:
            await conn.execute(_INSERT, tenant, sid)
        except asyncpg.UniqueViolationError:
            await conn.execute("ROLLBACK TO SAVEPOINT lake_fast_insert")
            unique = list(dict(records).items())
            await conn.copy_records_to_table(
                "lake_ts_stage", records=unique, columns=columns
            )
            await conn.execute(_INSERT + _UPSERT, tenant, sid)
            return len(unique)
        return len(records)

    # --- reads --------------------------------------------------------------------

    async def query(
        self,
        tenant: str,
        metric: str,
        tags: Mapping[str, str],
        start: datetime,
        end: datetime,
        limit: int,
        cursor: str | None = None,
    ) -> PointPage:
        """
        One page of points of matching series in ``[start, end)``.
        """
        after_series, after_ts = 0, start - timedelta(microseconds=1)
        if cursor:
            position = self._cursors.decode(cursor)
            try:
                after_series = int(position["s"])
                after_ts = datetime.fromisoformat(position["t"])
            except (KeyError, TypeError, ValueError):
                raise ValidationError(field="cursor", problem=FORGED) from None
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT d.series_id, s.tags, d.ts, d.value"
                + _FILTER
                + " AND (d.series_id, d.ts) > ($6, $7)"
                " ORDER BY d.series_id, d.ts LIMIT $8",
                tenant,
                metric,
                _tags_json(tags),
                start,
                end,
                after_series,
                after_ts,
                limit + 1,
            )
        more = len(rows) > limit
        rows = rows[:limit]
        points = [SeriesPoint(json.loads(r["tags"]), r["ts"], r["value"]) for r in rows]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = self._cursors.encode(
                {"s": last["series_id"], "t": last["ts"].isoformat()}
            )
        return PointPage(points=points, next_cursor=next_cursor)

    async def aggregate(
        self,
        tenant: str,
        metric: str,
        tags: Mapping[str, str],
        start: datetime,
        end: datetime,
        bucket: timedelta,
        fn: str,
    ) -> list[Bucket]:
        """
        Aggregate matching points into buckets of ``bucket`` aligned on ``start``.
        """
        agg = _AGGREGATES[fn]
        async with self._db.transaction(tenant) as conn:
            rows: list[Any] = await conn.fetch(
                f"SELECT date_bin($6::interval, d.ts, $4) AS b, {agg} AS v,"
                " count(*) AS n" + _FILTER + " GROUP BY b ORDER BY b",
                tenant,
                metric,
                _tags_json(tags),
                start,
                end,
                bucket,
            )
        return [Bucket(start=r["b"], value=float(r["v"]), count=r["n"]) for r in rows]

    async def ping(self) -> str | None:
        """
        Prove the points table answers.
        """
        await self._db.probe("SELECT 1 FROM ts_data LIMIT 1")
        return None
