"""
Mesh client: one reused gRPC channel per peer, found by logical name.

Peers come from config, one entry per name:

- ``"host:port"``: one static address;
- ``["host:port", "host:port"]``: a static list, balanced round-robin;
- ``"dns:///name:port"``: resolved by grpcio and balanced round-robin over every
  address (a Kubernetes headless Service works this way).

Every call carries a deadline: the configured call timeout, or less when the
caller's own deadline (``lake.deadline``) leaves less.

With ``mesh.tls.ca_file`` set, every channel is TLS and trusts only that CA (plus a
client certificate for peers that require one, and a server-name override when the
peers' certificates name another host).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake import deadline
from lake.errors import (
    DeadlineExceededError,
    LakeError,
    MeshError,
    MeshUnavailableError,
    UnsupportedError,
)
from lake.mesh.v1 import peers_pb2, peers_pb2_grpc
from lake.models import Event
from lake.protection import (
    BreakerState,
    Outcome,
    Protection,
    first_attempt,
)
from lake.tls import channel_credentials, channel_options, client_tls_of
from lake.tracing import end_span, failed, peer_span, trace_metadata

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["MeshClient", "open_mesh", "target_of"]

log = structlog.get_logger(__name__)
R = TypeVar("R")
Metadata = tuple[tuple[str, str], ...] | None

_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}]}, separators=(",", ":")
)
_REPLY_MARGIN_S = 0.05
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def target_of(spec: str | Sequence[str]) -> str:
    """
    The grpcio target for a peer's configured address or list of addresses.
    """
    if isinstance(spec, str):
        return spec
    hosts = [str(s) for s in spec]
    if len(hosts) == 1:
        return hosts[0]
    return "ipv4:" + ",".join(hosts)


def _failure(peer: str, exc: grpc.aio.AioRpcError, *, own_timeout: bool) -> LakeError:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not own_timeout:
        return DeadlineExceededError(f"peer {peer} did not answer in time")
    if code in _TRANSIENT or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # Past the peer's own (adaptive) timeout, with time left: worth a retry.
        unavailable = MeshUnavailableError(f"peer {peer} unavailable ({code.name})")
        unavailable.peer = peer
        return unavailable
    error = MeshError(f"peer {peer} failed ({code.name})")
    error.code = code  # type: ignore[attr-defined]
    return error


class MeshClient:
    """
    A registry of channels to peer services, each call behind the peer's breaker,
    retry budget and adaptive timeout (``lake.protection``).
    """

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        *,
        call_timeout: float,
        protection: Protection | None = None,
        tracer: Tracer | None = None,
    ):
        self._channels = dict(channels)
        # A span per call, its context sent on as traceparent (None: off).
        self._tracer = tracer
        self.call_timeout = call_timeout
        self._protection = protection or Protection(peer_ceiling_s=call_timeout)

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
            msg = f"peer {peer} is not configured"
            raise UnsupportedError(msg) from None

    def _timeout(self, limit: float | None = None) -> tuple[float, bool]:
        """
        The call's timeout, and whether it is the peer's own (not the caller's).
        """
        own = self.call_timeout if limit is None else min(limit, self.call_timeout)
        left = deadline.remaining()
        if left is None:
            return own, True
        # Keep a margin for our own reply: grpc rounds the deadline it sends up,
        # and the peer must give up before our caller does.
        left -= _REPLY_MARGIN_S
        if left <= 0:
            msg = "deadline exceeded before calling a peer"
            raise DeadlineExceededError(msg)
        return (own, True) if own < left else (left, False)

    async def ping(self, peer: str) -> str | None:
        """
        Ask ``peer``'s standard health service; raise when it is not serving.

        Says so while the peer's breaker is not closed.
        """
        stub = health_pb2_grpc.HealthStub(self.channel(peer))
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self._timeout()[0]
            )
        except grpc.aio.AioRpcError as exc:
            msg = f"peer {peer} unreachable ({exc.code().name})"
            raise MeshUnavailableError(msg) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            msg = f"peer {peer} is not serving"
            raise MeshUnavailableError(msg)
        state = self._protection.peer(peer).breaker.state
        if state is not BreakerState.CLOSED:
            return f"circuit {state.value.replace('_', '-')}"
        return None

    async def _call(
        self,
        peer: str,
        method: str,
        call: Callable[[float, Metadata], Awaitable[R]],
    ) -> R:
        guard = self._protection.peer(peer)
        ticket = guard.breaker.allow()
        if first_attempt():
            guard.budget.deposit()
        adaptive = guard.timeouts(method)
        timeout, own = self._timeout(
            adaptive.timeout(None) if self._protection.adaptive else None
        )
        span = peer_span(self._tracer, peer, method)
        started = time.perf_counter()
        try:
            reply = await call(timeout, trace_metadata(span))
        except grpc.aio.AioRpcError as exc:
            failed(span, exc.code().name)
            end_span(span)
            failure = _failure(peer, exc, own_timeout=own)
            outcome = Outcome.IGNORED  # the peer answered about the request
            if isinstance(failure, MeshUnavailableError):
                outcome = Outcome.FAILURE
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    adaptive.timed_out(timeout)
            guard.breaker.record(ticket, outcome, time.perf_counter() - started)
            raise failure from None
        except BaseException as exc:
            end_span(span, exc)
            guard.breaker.record(ticket, Outcome.IGNORED, 0.0)
            raise
        end_span(span)
        took = time.perf_counter() - started
        adaptive.record(took)
        guard.breaker.record(ticket, Outcome.SUCCESS, took)
        return reply

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """
        Embed ``texts`` with the cortex peer, one vector per text.
        """
        peer = "cortex"
        stub = peers_pb2_grpc.CortexStub(self.channel(peer))
        request = peers_pb2.EmbedRequest(texts=list(texts))
        reply = await self._call(
            peer,
            "Embed",
            lambda timeout, md: stub.Embed(request, timeout=timeout, metadata=md),
        )
        if len(reply.embeddings) != len(texts):
            msg = "peer cortex returned a wrong number of embeddings"
            raise MeshError(msg)
        return [list(e.values) for e in reply.embeddings]

    async def publish(self, events: Sequence[Event]) -> int:
        """
        Deliver ``events`` to the stream peer; return how many it accepted.
        """
        peer = "stream"
        stub = peers_pb2_grpc.StreamStub(self.channel(peer))
        request = peers_pb2.PublishRequest(events=[_event(e) for e in events])
        reply = await self._call(
            peer,
            "Publish",
            lambda timeout, md: stub.Publish(request, timeout=timeout, metadata=md),
        )
        return int(reply.accepted)


def _event(event: Event) -> peers_pb2.Event:
    payload = struct_pb2.Struct()
    json_format.ParseDict(dict(event.payload), payload)
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(event.occurred_at)
    return peers_pb2.Event(
        event_id=event.event_id,
        tenant=event.tenant,
        sequence=event.sequence,
        kind=event.kind,
        payload=payload,
        occurred_at=occurred,
    )


def _channel(
    target: str, options: list[tuple[str, Any]], tls: Mapping[str, str] | None
) -> grpc.aio.Channel:
    client_tls = client_tls_of(tls or {})
    if client_tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(
        target,
        channel_credentials(client_tls),
        options=options + channel_options(client_tls),
    )


@asynccontextmanager
async def open_mesh(
    *,
    peers: Mapping[str, str | Sequence[str]],
    call_timeout: float = 2.0,
    close_timeout: float = 2.0,
    tls: Mapping[str, str] | None = None,
    protection: Protection | None = None,
    tracer: Tracer | None = None,
) -> AsyncIterator[MeshClient]:
    """
    Open one lazy channel per peer and close them all on exit.

    Channels connect on first use, so a peer that is down does not stop start-up;
    it shows in health instead. ``tls`` is the ``mesh.tls`` settings table.

    Raises:
        ConfigError: a TLS file named in ``tls`` cannot be read.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 0),
        # A peer that comes back is used again within a few seconds (grpc's default
        # reconnect backoff grows to two minutes).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    channels = {
        name: _channel(target_of(spec), options, tls) for name, spec in peers.items()
    }
    try:
        log.info("mesh_opened", peers=sorted(channels))
        yield MeshClient(
            channels, call_timeout=call_timeout, protection=protection, tracer=tracer
        )
    finally:
        async with asyncio.timeout(close_timeout):
            await asyncio.gather(*(c.close(None) for c in channels.values()))
        log.info("mesh_closed")
