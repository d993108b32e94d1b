"""
Real process faults during writes (F19, F20): a ``lake serve`` drained by SIGTERM or
killed -9, and PostgreSQL stopped in immediate mode. Every acknowledged write
survives, and none is stored twice.

tests/api/test_drain.py covers F19's in-flight calls finishing, late calls refused
and a second signal; this adds what a probe and the database see.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import stamina
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.api.auth import hash_token
from lake.container import aresolve, create_container
from lake.errors import LakeError
from lake.operations import Point, QueryPoints, WritePoints
from lake.resources.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth
from tests.api.test_drain import wait_ready
from tests.servers import live_settings
from tests.waiting import eventually

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


def serve(servers, database: str, address: str) -> subprocess.Popen[bytes]:
    pg, rd = servers["postgres"], servers["redis"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=address,
        LAKE_GRPC__GRACE="5",
        LAKE_LOGGING__LEVEL="INFO",
        LAKE_POSTGRES__DSN=database,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
        LAKE_AUTH__TOKENS=f'{{ "{hash_token("token-a")}" = "tenant-a" }}',
        PYTHONWARNINGS="always",  # "Unclosed ..." and un-awaited coroutines show
    )
    return subprocess.Popen(
        [sys.executable, "-m", "lake", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def grpc_writer(
    address: str, w: int, acked: list[int], stop: asyncio.Event
) -> None:
    """Write one point per call (id = its timestamp) until ``stop`` or the
    server is gone; note each acknowledged id."""
    async with grpc.aio.insecure_channel(address) as channel:
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        n = 0
        while not stop.is_set():
            i = w * 100_000 + n
            try:
                await series.Write(
                    lake_pb2.WritePointsRequest(
                        metric="crash",
                        timestamps_us=[us(T0) + i],
                        values=[float(i)],
                    ),
                    metadata=auth(),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                return  # the server is gone: this write's outcome is unknown
            acked.append(us(T0) + i)
            n += 1


async def stored_ids(database: str, password: str, metric: str) -> list[int]:
    conn = await asyncpg.connect(database, password=password or None)
    try:
        rows = await conn.fetch(
            "SELECT d.ts FROM ts_data d JOIN ts_series s ON s.id = d.series_id"
            " WHERE s.metric = $1",
            metric,
        )
    finally:
        await conn.close()
    return [us(r["ts"]) for r in rows]


# --- F19: SIGTERM drain ---------------------------------------------------------------


async def test_f19_sigterm_probe_sees_not_serving_and_nothing_is_left_behind(
    servers, database
):
    """SIGTERM during writes: a health Watch sees NOT_SERVING, the process exits 0,
    every acknowledged write is stored, no connection is left on the database and
    nothing was left unclosed."""
    address = f"127.0.0.1:{free_port()}"
    proc = serve(servers, database, address)
    try:
        await wait_ready(address, proc)
        acked: list[int] = []
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=20
            )
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            writers = [
                asyncio.create_task(grpc_writer(address, w, acked, stop))
                for w in range(3)
            ]
            await eventually(lambda: len(acked) >= 30)
            proc.send_signal(signal.SIGTERM)
            seen = []
            while (reply := await watch.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                seen.append(reply.status)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    break
            stop.set()
            await asyncio.gather(*writers)
        _, raw_err = await asyncio.to_thread(proc.communicate, None, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
    err = raw_err.decode()
    assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert proc.returncode == 0, err
    assert "lake_stopped" in err
    for leak in ("Unclosed", "unclosed", "was never awaited", "Task was destroyed"):
        assert leak not in err
    got = await stored_ids(database, servers["postgres"].password, "crash")
    assert set(acked) <= set(got)
    assert len(got) == len(set(got))
    conn = await asyncpg.connect(database, password=servers["postgres"].password)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert left == 0


# --- F20: crashes during writes -------------------------------------------------------


async def test_f20_lake_killed_during_writes_keeps_every_acknowledged_write(
    servers, database
):
    """kill -9 of ``lake serve`` with four writers running: every acknowledged id is
    stored, once."""
    address = f"127.0.0.1:{free_port()}"
    proc = serve(servers, database, address)
    try:
        await wait_ready(address, proc)
        acked: list[int] = []
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(grpc_writer(address, w, acked, stop)) for w in range(4)
        ]
        await eventually(lambda: len(acked) >= 100)
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        await asyncio.wait_for(asyncio.gather(*writers), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.communicate, None, 10)
    assert proc.returncode == -signal.SIGKILL
    got = await stored_ids(database, servers["postgres"].password, "crash")
    assert set(acked) <= set(got)  # lost = 0
    assert len(got) == len(set(got))  # duplicates = 0
    assert len(got) - len(acked) <= 4  # unacknowledged: at most one per writer


async def test_f20_postgres_immediate_stop_during_writes_keeps_acknowledged_writes(
    tmp_path,
):
    """``pg_ctl -m immediate stop`` (a crash: no checkpoint) while four writers
    run, then start: every acknowledged point is stored, once."""
    stamina.set_testing(False)  # real backoff inside Lake while PostgreSQL is away
    pg, rd = EmbeddedPostgres(tmp_path), EmbeddedRedis(tmp_path)
    ends = {"postgres": pg.start(), "redis": rd.start()}
    manager = None
    try:
        settings: dict[str, Any] = live_settings(ends, ends["postgres"].url)
        manager = await aresolve(create_container(settings).manager)
        await manager.start()
        acked: list[datetime] = []
        crashed = asyncio.Event()
        back = asyncio.Event()

        async def writer(w: int) -> None:
            n = 0
            while not back.is_set() or n < 40:
                ts = T0 + timedelta(microseconds=w * 100_000 + n)
                op = WritePoints("t1", "crash", [Point(ts, 1.0)])
                for _ in range(200):  # the caller's retry, same id
                    try:
                        await manager.coordinate(op)
                    except LakeError:
                        await asyncio.sleep(0.05)  # a client's backoff
                        continue
                    acked.append(ts)
                    break
                n += 1

        async def crash() -> None:
            await eventually(lambda: len(acked) >= 100)
            await asyncio.to_thread(_immediate_stop, pg)
            crashed.set()
            await asyncio.to_thread(pg.start)
            back.set()

        await asyncio.wait_for(
            asyncio.gather(crash(), *(writer(w) for w in range(4))), 45
        )
        assert crashed.is_set()
        page = await manager.coordinate(
            QueryPoints("t1", "crash", T0, T0 + timedelta(hours=1), limit=100_000)
        )
        got = [p.ts for p in page.points]
        assert set(acked) <= set(got)
        assert len(got) == len(set(got))
    finally:
        if manager is not None:
            await manager.stop()
        rd.stop()
        pg.stop()


def _immediate_stop(pg: EmbeddedPostgres) -> None:
    pg._run("pg_ctl", "-D", str(pg.pgdata), "-m", "immediate", "-w", "stop")
