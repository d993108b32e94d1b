"""
Traces over a real Lake (PostgreSQL, Redis, a cortex peer on loopback), its spans
caught by an in-memory exporter put in place of the batch processor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog
from dependency_injector import providers
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from lake.api.tracing import TracingInterceptor
from lake.container import Container
from lake.logs import add_trace_ids
from lake.mesh.peers import CortexPeer, PeerServer
from lake.mesh.v1 import peers_pb2
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import api_container, auth, running_container

NEAREST = lake_pb2.NearestRequest(lon=0.0, lat=0.0, k=1)
PARIS = lake_pb2.Feature(id="paris", lon=2.3522, lat=48.8566)


class RecordingCortex(CortexPeer):
    """The cortex peer, keeping the metadata of every call."""

    def __init__(self) -> None:
        super().__init__(dim=16)
        self.metadata: list[dict[str, str]] = []

    async def Embed(
        self,
        request: peers_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> peers_pb2.EmbedResponse:
        self.metadata.append(dict(context.invocation_metadata() or ()))
        return await super().Embed(request, context)


@pytest.fixture
def memory() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def cortex(memory) -> AsyncIterator[PeerServer]:
    """A cortex peer that traces too (its own provider, the same exporter)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    server = PeerServer(
        RecordingCortex(), interceptors=[TracingInterceptor(provider.get_tracer("p"))]
    )
    await server.start()
    yield server
    await server.stop(None)


def traced(
    settings: dict[str, Any], memory: InMemorySpanExporter, *, enabled: bool = True
) -> Container:
    settings["tracing"]["enabled"] = enabled
    container = api_container(settings)
    container.span_processor.override(providers.Object(SimpleSpanProcessor(memory)))
    return container


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_a_call_is_an_rpc_span_over_an_operation_over_postgresql(
    lake_settings, memory
):
    """One write: the RPC's server span, the operation's span under it, and the
    PostgreSQL transaction's span under that, in one trace, with no token."""
    async with running_container(traced(lake_settings, memory)) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(features=[PARIS]), metadata=auth()
        )
    spans = memory.get_finished_spans()
    rpc = named(spans, "lake.v1.Spatial/Upsert")
    op = named(spans, "UpsertFeatures")
    pgs = [s for s in spans if s.name == "pg transaction"]
    assert rpc.kind is SpanKind.SERVER
    assert rpc.parent is None
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert parent_of(op) == span_id(rpc)
    assert pgs
    assert {parent_of(pg) for pg in pgs} == {span_id(op)}
    assert {trace_id(s) for s in (rpc, op, *pgs)} == {trace_id(rpc)}
    assert op.attributes == {
        "lake.operation": "UpsertFeatures",
        "lake.tenant": "tenant-a",
    }
    assert all(pg.kind is SpanKind.CLIENT for pg in pgs)
    for span in spans:
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert "token-a" not in values
        assert "paris" not in values


async def test_a_cached_read_shows_its_version_read_and_redis(lake_settings, memory):
    """A read: the version read, the Redis GET (a miss, then a hit) and SET."""
    async with running_container(traced(lake_settings, memory)) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(features=[PARIS]), metadata=auth()
        )
        memory.clear()
        for _ in range(2):
            await spatial.Nearest(NEAREST, metadata=auth())
    spans = memory.get_finished_spans()
    ops = [s for s in spans if s.name == "FeaturesNearest"]
    assert len(ops) == 2
    gets = [s for s in spans if s.name == "redis GET"]
    assert gets, [s.name for s in spans]
    assert {parent_of(s) for s in gets} <= {span_id(op) for op in ops}
    assert any(s.name == "pg cache version" for s in spans)
    assert all(
        (s.attributes or {}).get("db.system.name") == "redis"
        for s in spans
        if s.name.startswith("redis")
    )


async def test_search_text_carries_the_trace_to_cortex(lake_settings, memory, cortex):
    """SearchText's call to cortex is a span of the same trace, and cortex gets a
    traceparent naming it, so cortex's own span joins the trace."""
    lake_settings["mesh"]["peers"] = {"cortex": [cortex.address]}
    async with running_container(traced(lake_settings, memory)) as (_, _, channel):
        vectors = lake_pb2_grpc.VectorsStub(channel)
        await vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )
        memory.clear()
        cortex.peer.metadata.clear()
        await vectors.SearchText(
            lake_pb2.SearchTextRequest(collection="notes", text="vector search", k=1),
            metadata=auth(),
        )
    spans = memory.get_finished_spans()
    rpc = named(spans, "lake.v1.Vectors/SearchText")
    op = named(spans, "SearchText")
    embed = named(spans, "mesh cortex/Embed")
    served = named(spans, "lake.mesh.v1.Cortex/Embed")
    assert parent_of(op) == span_id(rpc)
    assert parent_of(embed) == span_id(op)
    assert parent_of(served) == span_id(embed)
    assert {trace_id(s) for s in (rpc, op, embed, served)} == {trace_id(rpc)}
    assert embed.kind is SpanKind.CLIENT
    assert served.kind is SpanKind.SERVER
    (received,) = cortex.peer.metadata
    version, sent_trace, sent_span, flags = received["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert sent_trace == format(trace_id(rpc), "032x")
    assert sent_span == format(span_id(embed), "016x")
    assert any(
        s.name == "pg transaction" and trace_id(s) == trace_id(rpc) for s in spans
    )


async def test_a_callers_traceparent_is_the_parent_of_the_rpc_span(
    lake_settings, memory
):
    """A call that arrives with a traceparent continues that trace."""
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    parent = ("traceparent", f"00-{caller_trace}-{caller_span}-01")
    async with running_container(traced(lake_settings, memory)) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Nearest(NEAREST, metadata=(*auth(), parent))
    rpc = named(memory.get_finished_spans(), "lake.v1.Spatial/Nearest")
    assert format(trace_id(rpc), "032x") == caller_trace
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert format(rpc.parent.span_id, "016x") == caller_span


async def test_a_refused_call_logs_its_trace_id_and_ends_its_span(
    lake_settings, memory
):
    """The auth refusal's log line carries the RPC span's trace and span ids; the
    span records PERMISSION_DENIED (the caller's error: status left unset)."""
    async with running_container(traced(lake_settings, memory)) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        with (
            structlog.testing.capture_logs(processors=[add_trace_ids]) as logs,
            pytest.raises(grpc.aio.AioRpcError) as refused,
        ):
            await spatial.Upsert(
                lake_pb2.UpsertFeaturesRequest(features=[PARIS]),
                metadata=(("authorization", "Bearer nobody"),),
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    rpc = named(memory.get_finished_spans(), "lake.v1.Spatial/Upsert")
    assert rpc.attributes is not None
    assert (
        rpc.attributes["rpc.grpc.status_code"]
        == grpc.StatusCode.UNAUTHENTICATED.value[0]
    )
    assert rpc.status.status_code is StatusCode.UNSET
    (line,) = [e for e in logs if e["event"] == "auth_failed"]
    assert line["trace_id"] == format(trace_id(rpc), "032x")
    assert line["span_id"] == format(span_id(rpc), "016x")


async def test_disabled_tracing_makes_no_span_and_sends_no_traceparent(
    lake_settings, memory, cortex
):
    """Off (the default): no tracing interceptor, no span, no traceparent to peers,
    no trace id in log lines."""
    lake_settings["mesh"]["peers"] = {"cortex": [cortex.address]}
    container = traced(lake_settings, memory, enabled=False)
    async with running_container(container) as (_, _, channel):
        vectors = lake_pb2_grpc.VectorsStub(channel)
        await vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )
        with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
            await vectors.SearchText(
                lake_pb2.SearchTextRequest(collection="notes", text="a", k=1),
                metadata=auth(),
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await vectors.SearchText(
                    lake_pb2.SearchTextRequest(collection="notes", text="a", k=1),
                    metadata=(("authorization", "Bearer nobody"),),
                )
        interceptors = container.layers()
    assert not any(isinstance(i, TracingInterceptor) for i in interceptors)
    assert container.tracer() is None
    # Only the peer's own spans (it traces on its side), never one of Lake's.
    assert all(
        s.name == "lake.mesh.v1.Cortex/Embed" for s in memory.get_finished_spans()
    )
    for served in memory.get_finished_spans():
        assert served.parent is None
    assert cortex.peer.metadata
    assert all("traceparent" not in md for md in cortex.peer.metadata)
    assert logs
    assert all("trace_id" not in e for e in logs)
