"""
Graceful shutdown of a real ``lake serve`` process with calls in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.api.auth import hash_token
from lake.mesh.peers import CortexPeer, PeerServer
from lake.resources.embedded import free_port
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth


async def wait_ready(address: str, proc: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            assert proc.poll() is None, "lake serve exited"
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service="lake.ready"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    msg = "lake serve did not become ready"
    raise AssertionError(msg)


def start_lake(servers, database, cortex: PeerServer, address: str) -> Any:
    pg, rd = servers["postgres"], servers["redis"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=address,
        LAKE_GRPC__GRACE="10",
        LAKE_LOGGING__LEVEL="INFO",
        LAKE_POSTGRES__DSN=database,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
        LAKE_MESH__PEERS=f'{{ cortex = "{cortex.address}" }}',
        LAKE_AUTH__TOKENS=f'{{ "{hash_token("token-a")}" = "tenant-a" }}',
    )
    return subprocess.Popen(
        [sys.executable, "-m", "lake", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def notes_collection(channel: grpc.aio.Channel) -> Any:
    vectors = lake_pb2_grpc.VectorsStub(channel)
    await vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    return vectors


async def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = await asyncio.to_thread(proc.communicate, None, 20)
    return err.decode()


async def test_sigterm_drains_in_flight_calls(servers, database):
    """SIGTERM: in-flight calls finish, new calls are refused, the process exits 0."""
    cortex = PeerServer(CortexPeer(dim=16))
    await cortex.start()
    address = f"127.0.0.1:{free_port()}"
    # Popen returns at once; the test needs the real process to signal it.
    proc = start_lake(servers, database, cortex, address)
    try:
        await wait_ready(address, proc)
        async with grpc.aio.insecure_channel(address) as channel:
            vectors = await notes_collection(channel)
            await vectors.UpsertTexts(
                lake_pb2.UpsertTextsRequest(
                    collection="notes", items=[lake_pb2.TextItem(id="1", text="hello")]
                ),
                metadata=auth(),
            )
            cortex.peer.delay = 1.0  # type: ignore[union-attr]

            async def search(i: int) -> lake_pb2.SearchVectorsResponse:
                return await vectors.SearchText(  # type: ignore[no-any-return]
                    lake_pb2.SearchTextRequest(collection="notes", text=f"hi {i}"),
                    metadata=auth(),
                    timeout=10,
                )

            in_flight = [asyncio.create_task(search(i)) for i in range(4)]
            await asyncio.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with grpc.aio.insecure_channel(address) as fresh:
                late = lake_pb2_grpc.VectorsStub(fresh).SearchText(
                    lake_pb2.SearchTextRequest(collection="notes", text="late"),
                    metadata=auth(),
                    timeout=5,
                )
                try:
                    await late
                    refused = None
                except grpc.aio.AioRpcError as exc:
                    refused = exc.code()
            results = await asyncio.gather(*in_flight)
        assert refused == grpc.StatusCode.UNAVAILABLE
        assert all(r.matches[0].id == "1" for r in results)
        _, raw_err = await asyncio.to_thread(proc.communicate, None, 20)
        err = raw_err.decode()
        assert proc.returncode == 0, err
        assert "lake_stopped" in err
    finally:
        await stop(proc)
        await cortex.stop(None)


async def test_a_second_signal_stops_at_once(servers, database):
    """A second SIGTERM during the drain ends it: exit 130 well before the grace."""
    cortex = PeerServer(CortexPeer(dim=16))
    await cortex.start()
    address = f"127.0.0.1:{free_port()}"
    proc = start_lake(servers, database, cortex, address)
    try:
        await wait_ready(address, proc)
        async with grpc.aio.insecure_channel(address) as channel:
            vectors = await notes_collection(channel)
            cortex.peer.delay = 8.0  # type: ignore[union-attr]
            slow = asyncio.ensure_future(
                vectors.SearchText(
                    lake_pb2.SearchTextRequest(collection="notes", text="slow"),
                    metadata=auth(),
                    timeout=15,
                )
            )
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.5)  # past the window that merges repeated signals
            assert proc.poll() is None  # still draining: grace is 10 s
            loop = asyncio.get_running_loop()
            started = loop.time()
            proc.send_signal(signal.SIGTERM)
            _, raw_err = await asyncio.to_thread(proc.communicate, None, 20)
            took = loop.time() - started
            slow.cancel()
        assert proc.returncode == 130, raw_err.decode()
        assert took < 4.0
        assert "stopped_at_once" in raw_err.decode()
    finally:
        await stop(proc)
        await cortex.stop(None)
