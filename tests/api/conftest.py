"""
A real Lake gRPC server in the test process, over real PostgreSQL and Redis, with
real peer servers on loopback reached through discovery (a static address list).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from lake.api.auth import hash_token
from lake.api.server import LakeServer
from lake.container import aresolve, create_container
from lake.manager import ServiceManager
from lake.mesh.peers import CortexPeer, PeerServer, StreamPeer
from lake.resources.embedded import free_port
from lake.v1 import lake_pb2_grpc

TOKENS: dict[str, Any] = {
    "token-a": "tenant-a",
    "token-b": "tenant-b",
    "token-admin": {"tenant": "tenant-a", "scope": "admin"},
}


def auth(token: str = "token-a") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Api:
    channel: grpc.aio.Channel
    server: LakeServer
    manager: ServiceManager
    cortex: list[CortexPeer]
    stream: StreamPeer
    stream_address: str
    vectors: Any
    series: Any
    spatial: Any


@pytest.fixture
async def cortex_servers() -> AsyncIterator[list[PeerServer]]:
    servers = [PeerServer(CortexPeer(dim=16)) for _ in range(2)]
    for s in servers:
        await s.start()
    yield servers
    for s in servers:
        await s.stop(None)


@pytest.fixture
def stream_address() -> str:
    return f"127.0.0.1:{free_port()}"


@asynccontextmanager
async def running_lake(
    settings: dict[str, Any], **server_options: Any
) -> AsyncIterator[tuple[LakeServer, ServiceManager, grpc.aio.Channel]]:
    """A started manager and gRPC server on 127.0.0.1:0, and a channel to it;
    ``server_options`` override LakeServer's keyword arguments."""
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    options: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "interval": 0.2,
        "tokens": {hash_token(t): grant for t, grant in TOKENS.items()},
        "max_deadline": 5.0,
    }
    server = LakeServer(manager, **(options | server_options))
    await server.start()
    tokens = await aresolve(container.tokens)
    await server.serving(tokens)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield server, manager, channel
    finally:
        await channel.close(None)
        await server.stop(0.5)
        await manager.stop()


@pytest.fixture
async def api(lake_settings, cortex_servers, stream_address) -> AsyncIterator[Api]:
    """Lake with two cortex peers and a stream peer address (started per test)."""
    lake_settings["mesh"]["peers"] = {
        "cortex": [s.address for s in cortex_servers],
        "stream": [stream_address],
    }
    lake_settings["mesh"]["call_timeout"] = 10.0
    async with running_lake(lake_settings) as (server, manager, channel):
        yield Api(
            channel=channel,
            server=server,
            manager=manager,
            cortex=[s.peer for s in cortex_servers],
            stream=StreamPeer(),
            stream_address=stream_address,
            vectors=lake_pb2_grpc.VectorsStub(channel),
            series=lake_pb2_grpc.TimeSeriesStub(channel),
            spatial=lake_pb2_grpc.SpatialStub(channel),
        )
