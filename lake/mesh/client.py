"""
Mesh client: one reused gRPC channel per peer, found by logical name.

Peers come from config as a target string per name: ``host:port`` (a static
address) or ``dns:///name:port`` (resolved by grpcio, balanced round-robin).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.errors import MeshUnavailableError, NotFoundError

__all__ = ["MeshClient", "open_mesh"]

log = structlog.get_logger(__name__)

_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}]}, separators=(",", ":")
)


class MeshClient:
    """
    A registry of channels to peer services.
    """

    def __init__(
        self, channels: Mapping[str, grpc.aio.Channel], *, call_timeout: float
    ):
        self._channels = dict(channels)
        self.call_timeout = call_timeout

    @property
    def peers(self) -> list[str]:
        """
        The logical names of the configured peers.
        """
        return sorted(self._channels)

    def channel(self, peer: str) -> grpc.aio.Channel:
        """
        Return the channel to ``peer``.
        """
        try:
            return self._channels[peer]
        except KeyError:
            msg = f"peer {peer!r} is not configured"
            raise NotFoundError(msg) from None

    async def ping(self, peer: str) -> str | None:
        """
        Ask ``peer``'s standard health service; raise when it is not serving.
        """
        stub = health_pb2_grpc.HealthStub(self.channel(peer))
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.call_timeout
            )
        except grpc.aio.AioRpcError as exc:
            msg = f"peer {peer} unreachable ({exc.code().name})"
            raise MeshUnavailableError(msg) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            msg = f"peer {peer} is not serving"
            raise MeshUnavailableError(msg)
        return None


@asynccontextmanager
async def open_mesh(
    *, peers: Mapping[str, str], call_timeout: float = 2.0, close_timeout: float = 2.0
) -> AsyncIterator[MeshClient]:
    """
    Open one lazy channel per peer and close them all on exit.

    Channels connect on first use, so a peer that is down does not stop start-up;
    it shows in health instead.
    """
    options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 0)]
    channels = {
        name: grpc.aio.insecure_channel(target, options=options)
        for name, target in peers.items()
    }
    try:
        log.info("mesh_opened", peers=sorted(channels))
        yield MeshClient(channels, call_timeout=call_timeout)
    finally:
        async with asyncio.timeout(close_timeout):
            await asyncio.gather(*(c.close(None) for c in channels.values()))
        log.info("mesh_closed")
