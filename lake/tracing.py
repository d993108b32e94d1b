"""
Traces: OpenTelemetry spans for each RPC, operation, PostgreSQL transaction, Redis
call and peer call; off by default (``tracing.enabled``).

Off, nothing of the SDK is imported, no tracer exists (``Tracing.tracer`` is None),
the gRPC interceptor is not in the server's list, and every helper here returns at
its first line: the hot path pays one ``is None`` test per boundary.

On, Lake has a ``TracerProvider`` of its own (never the global one, so two
containers in one process keep their spans apart) with a parent-based ratio
sampler: a call that arrives with a sampled ``traceparent`` is traced whatever
the ratio. Spans are exported in batches by a background thread (OTLP over gRPC
or the console). Children (PostgreSQL, Redis) are made only inside a recording
trace, so background loops (the relay's polls, upkeep) make no root spans; a
peer call always gets a span and carries ``traceparent`` on, sampled or not.

Spans carry no token, no SQL text or parameters, no stored data and no error
message: an error is its gRPC code or Lake's error class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "TRACEPARENT",
    "Tracing",
    "batch_processor",
    "child_span",
    "end_span",
    "extract_parent",
    "failed",
    "open_tracing",
    "operation_span",
    "peer_span",
    "service_name_of",
    "span_exporter",
    "trace_metadata",
]

TRACEPARENT = "traceparent"
# W3C trace context only: baggage could carry anything a caller put in it.
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[None] = nullcontext()


class Tracing:
    """
    The process's tracer (None when tracing is off) and its provider's shutdown.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: Tracer | None = (
            None if provider is None else provider.get_tracer("lake")
        )

    async def drain(self) -> None:
        """
        Export what is buffered and stop the exporter (off the event loop: the
        OTLP exporter blocks up to its timeout when the collector is away).
        """
        provider, self._provider = self._provider, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)


def span_exporter(exporter: str, endpoint: str) -> SpanExporter:
    """
    The exporter ``tracing.exporter`` names: ``otlp`` (gRPC to ``endpoint``,
    plaintext for ``http://``, TLS for ``https://``) or ``console`` (stdout).
    """
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=None)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter,
    )

    # A collector that is away costs each batch at most 5 s of the export thread.
    return OTLPSpanExporter(endpoint=endpoint, timeout=5)


def batch_processor(exporter: SpanExporter) -> SpanProcessor:
    """
    Spans handed to a background thread and exported in batches.
    """
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(exporter)


def open_tracing(
    *,
    enabled: bool,
    service_name: str,
    sample_ratio: float,
    processor: Callable[[], SpanProcessor],
) -> Tracing:
    """
    Lake's tracing: off (no tracer, nothing imported) unless ``enabled``; then a
    provider sampling ``sample_ratio`` of new traces (parent-based) that hands
    its spans to ``processor()``.
    """
    if not enabled:
        return Tracing()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ParentBased,
        TraceIdRatioBased,
    )

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create({"service.name": service_name}),
    )
    provider.add_span_processor(processor())
    return Tracing(provider)


def service_name_of(tracing_name: str, service_name: str) -> str:
    """
    ``tracing.service_name``, or ``service_name`` when it is empty.
    """
    return tracing_name or service_name


def operation_span(
    tracer: Tracer | None, name: str, tenant: str
) -> AbstractContextManager[Span | None]:
    """
    The current span of one operation (named after it), or nothing when off or
    inside a trace the caller did not sample (its span stays current, so log
    lines still carry the trace id).
    """
    if tracer is None:
        return _NO_SPAN
    current = trace.get_current_span()
    if current.get_span_context().is_valid and not current.is_recording():
        return _NO_SPAN
    return tracer.start_as_current_span(
        name,
        kind=SpanKind.INTERNAL,
        attributes={"lake.operation": name, "lake.tenant": tenant},
        record_exception=False,
        set_status_on_exception=False,
    )


def child_span(
    tracer: Tracer | None, name: str, attributes: dict[str, Any]
) -> Span | None:
    """
    A client span under the current one (not made current: nothing nests under
    it), or None when off or outside a recording trace.
    """
    if tracer is None or not trace.get_current_span().is_recording():
        return None
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def peer_span(tracer: Tracer | None, peer: str, method: str) -> Span | None:
    """
    A client span for one call to a peer (a root span outside any trace), or
    None when off.
    """
    if tracer is None:
        return None
    return tracer.start_span(
        f"mesh {peer}/{method}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.method": method, "lake.peer": peer},
    )


def trace_metadata(span: Span | None) -> tuple[tuple[str, str], ...] | None:
    """
    gRPC metadata that carries ``span``'s context (``traceparent``, and
    ``tracestate`` when there is one), or None without a span.
    """
    if span is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def extract_parent(metadata: Iterable[Any] | None) -> Context | None:
    """
    The caller's trace context from incoming gRPC metadata, or None when the call
    carries no ``traceparent`` (the span is then a new root).
    """
    carrier: dict[str, str] = {}
    for item in metadata or ():
        key, value = item
        if key in ("traceparent", "tracestate"):
            carrier[key] = value
    if TRACEPARENT not in carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def failed(span: Span | None, reason: str) -> None:
    """
    Mark ``span`` failed with ``reason`` (a code or an error class, never a
    message).
    """
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute("error.type", reason)


def end_span(span: Span | None, error: BaseException | None = None) -> None:
    """
    End ``span``, failed with ``error``'s class when there is one.
    """
    if span is None:
        return
    if error is not None:
        failed(span, type(error).__name__)
    span.end()
