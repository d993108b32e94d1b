"""
PostgreSQL restarting under load: operations ride it out, acknowledged data stays.
"""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import UTC, datetime, timedelta

import stamina

from lake.container import aresolve, create_container
from lake.errors import LakeError
from lake.operations import Point, QueryPoints, WritePoints
from lake.resources.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.servers import live_settings


async def test_fast_restart_under_load_loses_no_acknowledged_write(tmp_path):
    """Four writers during a fast restart (F1): every acknowledged point is stored;
    what reaches a caller is UNAVAILABLE (retries spent, or PostgreSQL's breaker
    open), only while PostgreSQL is away or just back; writes succeed again after."""
    stamina.set_testing(False)  # real backoff: retries must span the restart
    pg, rd = EmbeddedPostgres(tmp_path), EmbeddedRedis(tmp_path)
    ends = {"postgres": pg.start(), "redis": rd.start()}
    manager = None
    try:
        manager = await aresolve(
            create_container(live_settings(ends, ends["postgres"].url)).manager
        )
        await manager.start()
        t0 = datetime.now(UTC) - timedelta(hours=1)
        outcomes: collections.Counter[str] = collections.Counter()
        acked: list[tuple[int, datetime]] = []
        failed_at: list[float] = []
        ok_at: list[float] = []
        window: list[float] = []
        stop_at = time.monotonic() + 5.0

        async def writer(w: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                ts = t0 + timedelta(microseconds=w * 10_000_000 + i)
                try:
                    await manager.coordinate(
                        WritePoints("t1", "load", [Point(ts, 1.0)], {"w": str(w)})
                    )
                except LakeError as exc:
                    outcomes[type(exc).__name__] += 1
                    failed_at.append(time.monotonic())
                    await asyncio.sleep(0.01)  # a client backs off a little
                else:
                    acked.append((w, ts))
                    outcomes["ok"] += 1
                    ok_at.append(time.monotonic())
                i += 1

        async def restart() -> None:
            await asyncio.sleep(1.0)
            window.append(time.monotonic())
            await asyncio.to_thread(pg.stop)
            await asyncio.to_thread(pg.start)
            window.append(time.monotonic())

        await asyncio.gather(restart(), *(writer(w) for w in range(4)))
        page = await manager.coordinate(
            QueryPoints("t1", "load", t0, t0 + timedelta(hours=1), limit=100_000)
        )
        stored = {(p.tags["w"], p.ts) for p in page.points}
        lost = [a for a in acked if (str(a[0]), a[1]) not in stored]
        assert outcomes["ok"] > 500
        assert lost == []
        assert set(outcomes) <= {"ok", "StoreUnavailableError", "CircuitOpenError"}
        down, up = window
        # Failures only while it was away or coming back (breaker probes, pool
        # reconnecting: generously 3 s); writes acknowledged again afterwards.
        assert all(down <= t <= up + 3.0 for t in failed_at), (down, up, failed_at)
        assert any(t > up for t in ok_at)
    finally:
        if manager is not None:
            await manager.stop()
        rd.stop()
        pg.stop()
