"""
PostgreSQL failover (F8): Lake on a multi-host DSN
(``postgresql://…@h1:p1,h2:p2/db?target_session_attrs=read-write``) finds the new
primary by itself, says it is not ready meanwhile, and with a synchronous standby
loses no acknowledged write. A primary that turns read-only is detected and the
pool recycled.

The primary and its streaming standby run from the embedded wheel's binaries on
loopback (``tests/faults/ha.py``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import stamina
from structlog.testing import capture_logs

from lake.container import aresolve, create_container
from lake.errors import LakeError
from lake.health import Status
from lake.manager import ServiceManager
from lake.operations import Point, QueryPoints, WritePoints
from lake.resources.embedded import EmbeddedRedis
from tests.faults import ha
from tests.faults.conftest import FAST
from tests.servers import live_settings
from tests.waiting import eventually

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

# What a writer may hear while no primary takes writes: unavailable (retries
# spent, or PostgreSQL's breaker open), or its deadline spent on retries.
_GAP_ERRORS = {"StoreUnavailableError", "CircuitOpenError", "DeadlineExceededError"}


@asynccontextmanager
async def lake_on(dsn: str, ends: ha.Pair, base: Path) -> AsyncIterator[ServiceManager]:
    """A started Lake on ``dsn`` (the pair) and a Redis of its own, short bounds."""
    redis = EmbeddedRedis(base / "redis")
    values: dict[str, Any] = live_settings(ha.endpoints(dsn, ends, redis.start()), dsn)
    for (section, key), value in FAST.items():
        values[section][key] = value
    manager: ServiceManager | None = None
    try:
        manager = await aresolve(create_container(values).manager)
        await manager.start()
        yield manager
    finally:
        if manager is not None:
            await manager.stop()
        redis.stop()


@dataclass
class Writers:
    """Writers writing one point per call; what was acknowledged, and when."""

    manager: ServiceManager
    acked: list[tuple[int, datetime, float]] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, w: int) -> None:
        i = 0
        while not self.stop.is_set():
            ts = T0 + timedelta(microseconds=w * 100_000_000 + i)
            i += 1
            try:
                await self.manager.coordinate(
                    WritePoints("t1", "load", [Point(ts, 1.0)], {"w": str(w)})
                )
            except LakeError as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)  # a client backs off a little
            else:
                self.acked.append((w, ts, time.monotonic()))

    def acked_since(self, moment: float) -> int:
        return sum(1 for *_, at in self.acked if at > moment)


async def postgres_status(manager: ServiceManager) -> tuple[Status, bool]:
    report = await manager.health()
    return report.component("postgres").status, report.ready


async def stored(manager: ServiceManager) -> collections.Counter[tuple[str, datetime]]:
    page = await manager.coordinate(
        QueryPoints("t1", "load", T0, T0 + timedelta(hours=1), limit=100_000)
    )
    return collections.Counter((p.tags["w"], p.ts) for p in page.points)


async def test_failover_to_a_synchronous_standby_loses_no_acknowledged_write(
    tmp_path,
):
    """Four writers; the primary is killed (-m immediate) and the standby promoted:
    health says PostgreSQL is DOWN and Lake not ready during the gap, Lake finds the
    new primary through its DSN by itself, writes are acknowledged again, and every
    acknowledged point is on the new primary, once."""
    stamina.set_testing(False)  # real backoff: retries must span the failover
    with ha.pair(tmp_path) as ends:
        await ha.make_synchronous(ends)
        await eventually(lambda: _is_sync(ends), within=20.0)
        dsn = ha.multi_host_dsn(ends.primary, ends.standby)
        async with lake_on(dsn, ends, tmp_path) as manager:
            writers = Writers(manager)
            tasks = [asyncio.create_task(writers.run(w)) for w in range(4)]
            try:
                await eventually(lambda: len(writers.acked) >= 200, within=20.0)
                killed = time.monotonic()
                await asyncio.to_thread(ends.primary.kill)

                async def down() -> bool:
                    return await postgres_status(manager) == (Status.DOWN, False)

                await eventually(down, within=20.0)
                # A gap long enough for callers to hear of it (retries spent,
                # PostgreSQL's breaker open), as while an operator or Patroni
                # decides to promote.
                await eventually(lambda: writers.errors.total() >= 8, within=20.0)
                acked_before = len(writers.acked)
                promoting = time.monotonic()
                await asyncio.to_thread(ends.standby.promote)
                promoted = time.monotonic()
                await eventually(lambda: writers.acked_since(promoted) > 0, within=10.0)
                resumed = min(at for *_, at in writers.acked if at > promoting)

                async def ready() -> bool:
                    return await postgres_status(manager) == (Status.UP, True)

                await eventually(ready, within=20.0)
                await eventually(lambda: writers.acked_since(promoted) >= 200)
            finally:
                writers.stop.set()
                await asyncio.gather(*tasks)
            found = await stored(manager)
        on_new_primary = await _in_recovery(ends, ends.standby)
    acked = {(str(w), ts) for w, ts, _ in writers.acked}
    lost = acked - set(found)
    print(
        f"\nF8 failover: {len(acked)} writes acknowledged ({acked_before} before the"
        f" kill), lost {len(lost)}; first write acknowledged {resumed - promoting:.2f}"
        f" s after pg_ctl promote began (it took {promoted - promoting:.2f} s),"
        f" {resumed - killed:.2f} s after the kill (the test's wait for failures"
        f" included); errors {dict(writers.errors)}"
    )
    assert on_new_primary is False
    assert len(acked) == len(writers.acked)  # each acknowledged once
    assert lost == set()
    assert max(found.values()) == 1  # none stored twice
    assert set(writers.errors) <= _GAP_ERRORS


async def test_a_primary_turned_read_only_is_left_for_the_promoted_standby(tmp_path):
    """The primary is set read-only (default_transaction_read_only, as a demoted
    primary would be) and the standby promoted: the pooled connections still reach
    the old primary and their writes fail with 25006; Lake recycles the pool and
    the version reader, and new connections find the new primary through the DSN.
    Without the recycle, writes would fail until the pooled connections aged out."""
    stamina.set_testing(False)
    with ha.pair(tmp_path) as ends:
        dsn = ha.multi_host_dsn(ends.primary, ends.standby)
        async with lake_on(dsn, ends, tmp_path) as manager:
            writers = Writers(manager)
            with capture_logs() as logs:
                tasks = [asyncio.create_task(writers.run(w)) for w in range(2)]
                try:
                    await eventually(lambda: len(writers.acked) >= 50, within=20.0)
                    await _set_read_only(ends, ends.primary)
                    await eventually(lambda: writers.errors.total() > 0, within=20.0)
                    promoting = time.monotonic()
                    await asyncio.to_thread(ends.standby.promote)
                    await eventually(
                        lambda: writers.acked_since(promoting) >= 50, within=10.0
                    )
                    resumed = min(at for *_, at in writers.acked if at > promoting)
                finally:
                    writers.stop.set()
                    await asyncio.gather(*tasks)
            found = await stored(manager)
        new_primary_rows = await _rows(ends, ends.standby)
    acked = {(str(w), ts) for w, ts, _ in writers.acked}
    print(
        f"\nread-only primary: first write acknowledged {resumed - promoting:.2f} s"
        f" after pg_ctl promote began; errors {dict(writers.errors)}"
    )
    recycled = [e for e in logs if e["event"] == "pg_connections_recycled"]
    assert recycled
    assert {e["reason"] for e in recycled} == {"read-only"}
    assert acked <= set(found)
    assert new_primary_rows >= writers.acked_since(promoting)
    assert set(writers.errors) <= _GAP_ERRORS


async def _is_sync(ends: ha.Pair) -> bool:
    return await ha.sync_state(ends) == "sync"


async def _in_recovery(ends: ha.Pair, node: ha.Node) -> bool:
    conn = await ha.admin(node, ends.password)
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await conn.close()


async def _set_read_only(ends: ha.Pair, node: ha.Node) -> None:
    conn = await ha.admin(node, ends.password)
    try:
        await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _rows(ends: ha.Pair, node: ha.Node) -> int:
    conn = await ha.admin(node, ends.password)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ts_data"))
    finally:
        await conn.close()
