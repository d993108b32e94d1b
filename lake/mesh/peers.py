"""
Reference implementations of Lake's two peers, to run the whole mesh on one machine.

- ``CortexPeer``: embeds texts deterministically (feature hashing of words and
  character trigrams into ``dim`` dimensions, L2-normalised): the same text always
  gives the same vector, and texts that share words land near each other.
- ``StreamPeer``: accepts events, keeps them in memory (and optionally appends them
  to a JSON-lines file), and drops redeliveries by event id.

Both serve the standard health service so Lake's health monitor sees them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lake.mesh.v1 import peers_pb2, peers_pb2_grpc

__all__ = ["CortexPeer", "PeerServer", "StreamPeer", "embed_text"]

_WORD = re.compile(r"\w+", re.UNICODE)


def embed_text(text: str, dim: int) -> list[float]:
    """
    A deterministic embedding of ``text`` in ``dim`` dimensions.
    """
    vector = [0.0] * dim
    words = _WORD.findall(text.lower())
    grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
    for feature, weight in [(w, 1.0) for w in words] + [(g, 0.5) for g in grams]:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[index] += sign * weight
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class CortexPeer(peers_pb2_grpc.CortexServicer):
    """
    The embedding peer; ``delay`` slows every call (for drain and deadline tests),
    ``failing`` answers every call UNAVAILABLE (for retry and breaker tests).
    """

    def __init__(self, dim: int = 64, delay: float = 0.0) -> None:
        self.dim = dim
        self.delay = delay
        self.failing = False
        self.calls = 0
        self.deadlines: list[float | None] = []

    async def Embed(
        self,
        request: peers_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> peers_pb2.EmbedResponse:
        self.calls += 1
        self.deadlines.append(context.time_remaining())
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        if self.delay:
            await asyncio.sleep(self.delay)
        return peers_pb2.EmbedResponse(
            embeddings=[
                peers_pb2.Embedding(values=embed_text(t, self.dim))
                for t in request.texts
            ]
        )


@dataclass
class StreamPeer(peers_pb2_grpc.StreamServicer):
    """
    The event peer: keeps each event once, in arrival order.
    """

    out: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0
    _seen: set[str] = field(default_factory=set)

    async def Publish(
        self,
        request: peers_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> peers_pb2.PublishResponse:
        fresh = []
        for event in request.events:
            self.received += 1
            if event.event_id in self._seen:
                continue
            self._seen.add(event.event_id)
            fresh.append(
                json_format.MessageToDict(event, preserving_proto_field_name=True)
            )
        self.events.extend(fresh)
        if self.out is not None and fresh:
            with self.out.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(e) + "\n" for e in fresh)
        return peers_pb2.PublishResponse(accepted=len(request.events))


class PeerServer:
    """
    A grpc.aio server for one peer, with the standard health service; TLS when
    given ``credentials``.
    """

    def __init__(
        self,
        peer: CortexPeer | StreamPeer,
        address: str = "127.0.0.1:0",
        *,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    ):
        self.peer = peer
        # interceptors: e.g. Lake's tracing one, so a test sees the peer's span.
        self._server = grpc.aio.server(interceptors=list(interceptors))
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if isinstance(peer, CortexPeer):
            peers_pb2_grpc.add_CortexServicer_to_server(peer, self._server)
        else:
            peers_pb2_grpc.add_StreamServicer_to_server(peer, self._server)
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:  # TLS, e.g. from lake.tls.server_credentials
            self.port = self._server.add_secure_port(address, credentials)
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        """
        Start serving and report SERVING.
        """
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """
        Stop serving.
        """
        await self._server.stop(grace)

    async def wait(self) -> None:
        """
        Serve until stopped.
        """
        await self._server.wait_for_termination()
