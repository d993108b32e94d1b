"""
PostgreSQL stopped for 20 s under load (issue 9's acceptance scenario, F2 with the
real server): the breaker opens, callers are answered at once, health says why,
Lake serves again by itself once PostgreSQL is back, and nothing acknowledged is
lost.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import stamina

from lake.container import aresolve, create_container
from lake.errors import LakeError
from lake.health import Status
from lake.operations import Point, QueryPoints, WritePoints
from lake.resources.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.servers import live_settings
from tests.waiting import eventually

OUTAGE_S = 20.0


async def test_postgres_stopped_for_20_seconds_under_load(tmp_path):
    stamina.set_testing(False)  # real backoff, as in production
    pg, rd = EmbeddedPostgres(tmp_path), EmbeddedRedis(tmp_path)
    ends = {"postgres": pg.start(), "redis": rd.start()}
    manager = None
    try:
        container = create_container(live_settings(ends, ends["postgres"].url))
        manager = await aresolve(container.manager)
        await manager.start()
        breaker = container.protection().postgres.breaker
        t0 = datetime.now(UTC) - timedelta(hours=1)
        acked: list[tuple[int, datetime]] = []
        failures: list[tuple[float, float, str]] = []  # (when, took, kind)
        successes: list[float] = []
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                ts = t0 + timedelta(microseconds=w * 100_000_000 + i)
                i += 1
                started = time.monotonic()
                try:
                    await manager.coordinate(
                        WritePoints("t1", "load", [Point(ts, 1.0)], {"w": str(w)})
                    )
                except LakeError as exc:
                    ended = time.monotonic()
                    failures.append((ended, ended - started, type(exc).__name__))
                    await asyncio.sleep(0.01)  # a client backs off a little
                else:
                    acked.append((w, ts))
                    successes.append(time.monotonic())

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        await eventually(lambda: len(successes) > 50, within=30)
        down = time.monotonic()
        await asyncio.to_thread(pg.stop)
        # The breaker opens on the failures, and health says why.
        await eventually(lambda: breaker.transitions.get("closed->open", 0) >= 1)
        opened = time.monotonic()
        report = await manager.health()
        postgres = report.component("postgres")
        assert postgres.status is Status.DOWN, postgres
        assert not report.ready
        await asyncio.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
        await asyncio.to_thread(pg.start)  # returns once it accepts connections
        up = time.monotonic()
        await eventually(lambda: any(t > up for t in successes), within=30)
        first_ok = min(t for t in successes if t > up)
        await eventually(lambda: len([t for t in successes if t > up]) > 50)
        stop.set()
        await asyncio.gather(*writers)

        # While open: answered at once (a few ms), only ever UNAVAILABLE.
        answered = [took for when, took, _ in failures if opened < when < up]
        assert len(answered) > 100
        assert statistics.median(answered) < 0.005, statistics.median(answered)
        kinds = {kind for _, _, kind in failures}
        assert kinds <= {"StoreUnavailableError", "CircuitOpenError"}, kinds
        assert "CircuitOpenError" in kinds
        # Serving again by itself soon after PostgreSQL is back (the bench measures
        # it; generously bounded here for a loaded machine).
        assert first_ok - up < 5.0, first_ok - up
        assert all(when < up + 5.0 for when, _, _ in failures)
        await eventually(lambda: breaker.state.value == "closed")
        assert (await manager.health()).ready
        # Nothing acknowledged is lost, nothing stored twice.
        page = await manager.coordinate(
            QueryPoints("t1", "load", t0, t0 + timedelta(hours=1), limit=100_000)
        )
        stored = [(p.tags["w"], p.ts) for p in page.points]
        assert len(stored) == len(set(stored))
        missing = {(str(w), ts) for w, ts in acked} - set(stored)
        assert missing == set()
    finally:
        if manager is not None:
            await manager.stop()
        rd.stop()
        pg.stop()
