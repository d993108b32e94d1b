"""
A real Lake gRPC server in the test process, over real PostgreSQL and Redis, with
real peer servers on loopback reached through discovery (a static address list).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from dependency_injector import providers

from lake.api.auth import hash_token
from lake.api.server import LakeServer
from lake.bootstrap import Lake
from lake.container import Container, aresolve, create_container
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


# running_lake's keyword options: the settings (section, key) each one sets.
SERVER_OPTIONS: dict[str, tuple[str, str]] = {
    "address": ("grpc", "address"),
    "interval": ("health", "interval"),
    "max_message_bytes": ("grpc", "max_message_bytes"),
    "max_concurrent_rpcs": ("grpc", "max_concurrent_rpcs"),
    "max_open_streams": ("grpc", "max_open_streams"),
    "max_streams_per_peer": ("grpc", "max_streams_per_peer"),
    "max_streams_per_connection": ("grpc", "max_streams_per_connection"),
    "max_deadline": ("grpc", "max_deadline_s"),
    "max_connection_age": ("grpc", "max_connection_age_s"),
    "stream_idle_timeout": ("grpc", "stream_idle_timeout_s"),
    "reflection_enabled": ("grpc", "reflection"),
    "tokens": ("auth", "tokens"),
    "auth_enabled": ("auth", "enabled"),
    "token_refresh": ("auth", "refresh_s"),
    "max_auth_failures": ("auth", "max_failures"),
    "auth_failure_window": ("auth", "failure_window_s"),
    "metrics_address": ("metrics", "address"),
}


def api_settings(settings: dict[str, Any], **server_options: Any) -> dict[str, Any]:
    """A copy of ``settings`` for a test server on 127.0.0.1:0 with the test
    tokens; ``server_options`` (names in SERVER_OPTIONS) override settings."""
    values = copy.deepcopy(settings)
    options: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "interval": 0.2,
        "tokens": {hash_token(t): grant for t, grant in TOKENS.items()},
        "max_deadline": 5.0,
    }
    for name, value in (options | server_options).items():
        section, key = SERVER_OPTIONS[name]
        values[section][key] = value
    return values


def api_container(settings: dict[str, Any], **server_options: Any) -> Container:
    """Lake's container for a test server: no background workers (tests deliver
    events and run upkeep themselves) and a short stop grace."""
    container = create_container(api_settings(settings, **server_options))
    container.workers.override(providers.Object([]))
    container.lake.add_kwargs(grace=0.5)
    return container


@asynccontextmanager
async def running_container(
    container: Container,
) -> AsyncIterator[tuple[LakeServer, ServiceManager, grpc.aio.Channel]]:
    """Lake started through ``container`` (as ``lake serve`` does), and a channel
    to its server."""
    lake: Lake = await aresolve(container.lake)
    await lake.start()
    assert lake.server is not None
    channel = grpc.aio.insecure_channel(lake.server.address)
    try:
        yield lake.server, lake.manager, channel
    finally:
        await channel.close(None)
        await lake.stop()


@asynccontextmanager
async def running_lake(
    settings: dict[str, Any], **server_options: Any
) -> AsyncIterator[tuple[LakeServer, ServiceManager, grpc.aio.Channel]]:
    """A started Lake on 127.0.0.1:0 built through the container, and a channel
    to it; ``server_options`` override the settings named in SERVER_OPTIONS."""
    async with running_container(api_container(settings, **server_options)) as parts:
        yield parts


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
