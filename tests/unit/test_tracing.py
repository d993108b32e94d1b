"""
Tracing's settings, its wiring when off and on, sampling, propagation helpers and
the trace ids in log lines (no servers: an in-memory exporter).
"""

from __future__ import annotations

import pytest
from dependency_injector import providers
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from lake.api.tracing import TracingInterceptor
from lake.config import load_settings
from lake.container import create_container
from lake.errors import ConfigError
from lake.logs import add_trace_ids
from lake.tracing import (
    Tracing,
    child_span,
    extract_parent,
    open_tracing,
    operation_span,
    peer_span,
    span_exporter,
    trace_metadata,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def memory_tracing(memory: InMemorySpanExporter, ratio: float = 1.0) -> Tracing:
    return open_tracing(
        enabled=True,
        service_name="lake-test",
        sample_ratio=ratio,
        processor=lambda: SimpleSpanProcessor(memory),
    )


def test_tracing_is_off_by_default_and_named_after_the_service():
    values = load_settings("testing")
    assert values["tracing"]["enabled"] is False
    assert values["tracing"]["exporter"] == "otlp"
    assert values["tracing"]["service_name"] == ""


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("LAKE_TRACING__EXPORTER", "zipkin", "tracing.exporter"),
        ("LAKE_TRACING__SAMPLE_RATIO", "1.5", "tracing.sample_ratio"),
        ("LAKE_TRACING__ENDPOINT", "collector:4317", "tracing.endpoint"),
        ("LAKE_TRACING__ENDPOINT", "", "tracing.endpoint"),
    ],
)
def test_bad_tracing_settings_are_refused_at_boot(monkeypatch, variable, value, key):
    monkeypatch.setenv("LAKE_TRACING__ENABLED", "true")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings("testing")


def test_the_console_exporter_needs_no_collector(monkeypatch):
    monkeypatch.setenv("LAKE_TRACING__ENABLED", "true")
    monkeypatch.setenv("LAKE_TRACING__EXPORTER", "console")
    monkeypatch.setenv("LAKE_TRACING__ENDPOINT", "")
    assert load_settings("testing")["tracing"]["exporter"] == "console"


def test_off_the_server_has_no_tracing_interceptor_and_nothing_is_built(settings):
    """Off: no tracer, no interceptor in the list, no exporter or processor."""
    container = create_container(settings)
    built: list[str] = []
    container.span_processor.override(
        providers.Callable(lambda: built.append("processor"))
    )
    assert container.tracer() is None
    interceptors = container.layers()
    assert len(interceptors) == 4
    assert not any(isinstance(i, TracingInterceptor) for i in interceptors)
    assert built == []


def test_on_the_tracing_interceptor_comes_first(settings):
    settings["tracing"]["enabled"] = True
    container = create_container(settings)
    memory = InMemorySpanExporter()
    container.span_processor.override(providers.Object(SimpleSpanProcessor(memory)))
    interceptors = container.layers()
    assert isinstance(interceptors[0], TracingInterceptor)
    assert len(interceptors) == 5
    assert container.tracer() is not None


def test_off_every_helper_is_a_no_op():
    with operation_span(None, "SearchVectors", "t") as span:
        assert span is None
        assert child_span(None, "pg transaction", {}) is None
        assert peer_span(None, "cortex", "Embed") is None
        assert trace_metadata(None) is None


def test_children_only_inside_a_recording_trace():
    """Background work (no current span) makes no PostgreSQL or Redis span."""
    memory = InMemorySpanExporter()
    tracer = memory_tracing(memory).tracer
    assert child_span(tracer, "pg transaction", {}) is None
    with operation_span(tracer, "QueryPoints", "t"):
        child = child_span(tracer, "pg transaction", {})
        assert child is not None
        child.end()
    names = [s.name for s in memory.get_finished_spans()]
    assert names == ["pg transaction", "QueryPoints"]


def test_a_sampled_caller_is_traced_whatever_the_ratio():
    """Parent-based: ratio 0 makes no new trace, but continues a sampled one."""
    memory = InMemorySpanExporter()
    tracer = memory_tracing(memory, ratio=0.0).tracer
    assert tracer is not None
    with tracer.start_as_current_span("root") as root:
        assert not root.is_recording()
    parent = extract_parent([("traceparent", PARENT)])
    with tracer.start_as_current_span("continued", context=parent) as span:
        assert span.is_recording()
    assert [s.name for s in memory.get_finished_spans()] == ["continued"]


def test_a_peer_call_carries_its_span_as_traceparent():
    memory = InMemorySpanExporter()
    tracer = memory_tracing(memory).tracer
    span = peer_span(tracer, "cortex", "Embed")
    assert span is not None
    metadata = dict(trace_metadata(span) or ())
    context = span.get_span_context()
    assert metadata["traceparent"].split("-")[1:3] == [
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
    ]
    span.end()


def test_a_call_without_traceparent_starts_a_new_trace():
    assert extract_parent([("authorization", "Bearer x")]) is None
    assert extract_parent(None) is None
    parent = extract_parent([("traceparent", PARENT), ("x", "y")])
    assert parent is not None
    remote = trace.get_current_span(parent).get_span_context()
    assert format(remote.trace_id, "032x") == PARENT.split("-")[1]


def test_log_lines_carry_the_active_spans_ids_and_nothing_without_one():
    memory = InMemorySpanExporter()
    tracer = memory_tracing(memory).tracer
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with operation_span(tracer, "SearchText", "t") as span:
        assert span is not None
        line = add_trace_ids(None, "info", {"event": "x"})
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


async def test_drain_exports_what_is_buffered_and_stops_once():
    memory = InMemorySpanExporter()
    tracing = memory_tracing(memory)
    await tracing.drain()
    await tracing.drain()
    await Tracing().drain()  # off: nothing to do


def test_the_exporter_named_is_built():
    console = span_exporter("console", "")
    assert type(console).__name__ == "ConsoleSpanExporter"
    otlp = span_exporter("otlp", "http://127.0.0.1:4317")
    assert type(otlp).__name__ == "OTLPSpanExporter"
    otlp.shutdown()


def test_a_trace_the_caller_did_not_sample_costs_no_operation_span():
    """Unsampled: the RPC's span stays current (logs keep the trace id), and the
    operation and its children make no span of their own."""
    memory = InMemorySpanExporter()
    tracer = memory_tracing(memory).tracer
    assert tracer is not None
    parent = extract_parent([("traceparent", PARENT[:-2] + "00")])
    with tracer.start_as_current_span("rpc", context=parent) as rpc:
        assert not rpc.is_recording()
        with operation_span(tracer, "SearchText", "t") as span:
            assert span is None
            assert child_span(tracer, "pg transaction", {}) is None
            line = add_trace_ids(None, "info", {"event": "x"})
    assert line["trace_id"] == PARENT.split("-")[1]
    assert memory.get_finished_spans() == ()
