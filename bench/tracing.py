"""
What tracing costs per call, off and on.

Run ``uv run python -m bench.tracing`` (a few seconds, no servers):

- off: every hook Lake runs on a call while ``tracing.enabled`` is false (the
  operation's span, two child spans, a peer span and its metadata, the log
  processor) beside the same code without them, in ns per call;
- on: one RPC through the tracing interceptor as a cached read's miss makes it
  (server span, operation span, version read, Redis GET, PostgreSQL transaction,
  Redis SET: six spans, batch processor, exporter that drops them) beside the
  same call untraced, and the same with ``sample_ratio = 0`` (spans made but
  not recorded), in ns per call; and with the spans ended in line (no export
  thread), which is the spans' own cost.

With ``--wire`` it also starts PostgreSQL, Redis and two ``lake serve`` on one
database, one tracing (console exporter into /dev/null, ``--ratio`` sampled) and
one not, and prints ``Spatial.Nearest`` calls/s and server CPU per call of each in
interleaved rounds, and their ratio (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Tracer

from bench.grpc_path import (
    AUTH,
    cpu_seconds,
    lake_env,
    load,
    process,
    wait_serving,
    where,
)
from bench.run import bench_servers, rate, spread
from lake.api.tracing import TracingInterceptor
from lake.logs import add_trace_ids
from lake.resources.embedded import Endpoint, free_port
from lake.tracing import (
    batch_processor,
    child_span,
    end_span,
    open_tracing,
    operation_span,
    peer_span,
    trace_metadata,
)
from lake.v1 import lake_pb2_grpc


class _Drop(SpanExporter):
    """An exporter that takes every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Handler:
    """The parts of a grpc method handler the interceptor reads."""

    def __init__(self, behavior: Any) -> None:
        self.unary_unary = behavior
        self.stream_unary = None

    def _replace(self, **changes: Any) -> Any:
        new = _Handler(self.unary_unary)
        for key, value in changes.items():
            setattr(new, key, value)
        return new


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer x"), ("user-agent", "grpc-python"))

    def code(self) -> None:
        return None


def _best_ns(fns: list[Callable[[], Any]], n: int, repeat: int = 7) -> list[float]:
    # The functions take turns, so load on the machine hits them alike.
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, into in zip(fns, runs, strict=True):
            started = time.perf_counter_ns()
            for _ in range(n):
                fn()
            into.append((time.perf_counter_ns() - started) / n)
    return [min(r) for r in runs]


async def _abest_ns(
    fns: list[Callable[[], Any]], n: int, repeat: int = 7
) -> list[float]:
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, into in zip(fns, runs, strict=True):
            started = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            into.append((time.perf_counter_ns() - started) / n)
    return [min(r) for r in runs]


def _off() -> None:
    tracer: Tracer | None = None

    def nothing() -> None:
        meta = None
        event = {"event": "x"}
        del meta, event

    def hooks() -> None:
        with operation_span(tracer, "FeaturesNearest", "acme"):
            pg = child_span(tracer, "pg transaction", {})
            end_span(pg)
            redis = child_span(tracer, "redis GET", {})
            end_span(redis)
            peer = peer_span(tracer, "cortex", "Embed")
            meta = trace_metadata(peer)
            end_span(peer)
        event = add_trace_ids(None, "info", {"event": "x"})
        del meta, event

    base, off = _best_ns([nothing, hooks], 200_000)
    print("tracing off (tracing.enabled = false), in process, best of 7 runs")
    print(
        f"  every hook of one call: {off - base:+.0f} ns/call"
        f" ({off:.0f} with them, {base:.0f} without)"
    )
    alone = _best_ns([lambda: add_trace_ids(None, "info", {"event": "x"})], 200_000)
    print(f"  the log processor alone, no span active: {alone[0]:.0f} ns/line")


def _rpc(tracer: Tracer | None) -> Callable[[Any, Any], Any]:
    async def behavior(request: Any, context: Any) -> Any:
        with operation_span(tracer, "FeaturesNearest", "acme"):
            for name in ("pg cache version", "redis GET", "pg transaction"):
                end_span(child_span(tracer, name, {"db.system.name": "x"}))
            end_span(child_span(tracer, "redis SET", {"db.system.name": "redis"}))
        return request

    return behavior


async def _on() -> None:
    context = _Context()
    untraced = _rpc(None)

    async def plain() -> Any:
        # The same call with tracing off: every hook a no-op, no interceptor.
        return await untraced(b"", context)

    results = {}
    variants: dict[str, tuple[float, Callable[[SpanExporter], SpanProcessor]]] = {
        "batch, sample_ratio = 1": (1.0, batch_processor),
        "in line, sample_ratio = 1": (1.0, SimpleSpanProcessor),
        "batch, sample_ratio = 0": (0.0, batch_processor),
    }
    for label, (ratio, make) in variants.items():
        tracing = open_tracing(
            enabled=True,
            service_name="bench",
            sample_ratio=ratio,
            processor=partial(make, _Drop()),
        )
        tracer = tracing.tracer
        assert tracer is not None
        interceptor = TracingInterceptor(tracer)
        wrapped = interceptor.wrap(_Handler(_rpc(tracer)), "/lake.v1.Spatial/Nearest")

        async def traced(handler: Any = wrapped) -> Any:
            return await handler.unary_unary(b"", context)

        base, on = await _abest_ns([plain, traced], 10_000)
        results[label] = (base, on)
        await tracing.drain()
    print("tracing on, one RPC of six spans (an exporter that drops them), best of 7")
    for label, (base, on) in results.items():
        print(f"  {label:26} {on - base:+9.0f} ns/call ({on:.0f} vs {base:.0f})")
    print("  (in line: the spans' own cost; batch adds the export thread's GIL share)")


async def wire(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    """
    Two Lakes on one database, tracing on and off, interleaved rounds.
    """
    import grpc

    ports = {"on": free_port(), "off": free_port()}
    pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        for name, port in ports.items():
            env = lake_env(pg, redis, port)
            if name == "on":
                env["LAKE_TRACING__ENABLED"] = "true"
                env["LAKE_TRACING__EXPORTER"] = "console"  # stdout: /dev/null
                env["LAKE_TRACING__SAMPLE_RATIO"] = str(args.ratio)
            pids[name] = stack.enter_context(process(["-m", "lake", "serve"], env)).pid
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}", "lake.ready")
        channels = {
            name: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            for name, port in ports.items()
        }
        try:
            stubs = {
                name: lake_pb2_grpc.SpatialStub(ch) for name, ch in channels.items()
            }
            await load(stubs["on"], args.features)

            def hit(stub: Any) -> Callable[[int], Any]:
                async def call(i: int) -> object:
                    return await stub.Nearest(where(i % 64), metadata=AUTH, timeout=10)

                return call

            calls = {name: hit(stub) for name, stub in stubs.items()}
            for call in calls.values():
                await rate(500, call, args.in_flight)
            qps: dict[str, list[float]] = {"on": [], "off": []}
            cpu: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                order = ["on", "off"] if round_ % 2 == 0 else ["off", "on"]
                for name in order:  # alternately first: load drifts
                    before = cpu_seconds(pids[name])
                    qps[name].append(
                        await rate(args.calls, calls[name], args.in_flight)
                    )
                    used = cpu_seconds(pids[name]) - before
                    cpu[name].append(used / args.calls * 1e6)
        finally:
            for ch in channels.values():
                await ch.close(None)
    ratios = [a / b for a, b in zip(qps["on"], qps["off"], strict=True)]
    print(
        f"\nSpatial.Nearest (cacheable), {args.in_flight} in flight,"
        f" {args.rounds} rounds, sample_ratio {args.ratio}"
    )
    for name in ("on", "off"):
        print(
            f"  tracing {name:<4} {spread(qps[name], 0)} calls/s,"
            f" server CPU {spread(cpu[name], 0)} us/call"
        )
    cpu_ratios = [b / a for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    print(
        f"  calls/s on / off      {spread(ratios)} (mean {statistics.mean(ratios):.3f})"
    )
    print(f"  CPU per call off / on {spread(cpu_ratios)}")


def main() -> None:
    """
    Print the cost of tracing off, and on, per call; with --wire, over gRPC too.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.tracing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--wire", action="store_true", help="Also over gRPC.")
    parser.add_argument("--ratio", type=float, default=1.0, help="sample_ratio on")
    parser.add_argument("--features", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    _off()
    asyncio.run(_on())
    if args.wire:
        with bench_servers() as (pg, redis):
            asyncio.run(wire(args, pg, redis))


if __name__ == "__main__":
    main()
