"""
What usage metering costs per call.

Run ``uv run python -m bench.metering`` (a few seconds, no servers): the meter's
``record`` (ns/record), the interceptor's wrapper around one call beside the same
call unwrapped (deserialise, behaviour, serialise: ns/call), and a timed database
transaction beside an untimed one. With ``--wire`` it also starts PostgreSQL,
Redis and two Lake servers on one database, one metering and one not, and prints
``Spatial.Nearest`` calls/s of each in interleaved rounds and their ratio
(metering on / off), cacheable requests with 32 calls in flight (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

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
from lake.api.auth import _PRINCIPAL, Principal
from lake.api.metering import MeteringInterceptor
from lake.metering import OK, Meter, close_charge, open_charge, timed_db
from lake.resources.embedded import Endpoint, free_port
from lake.tokens import Scope
from lake.v1 import lake_pb2, lake_pb2_grpc


def best_ns(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """
    The best of ``repeat`` runs of ``n`` calls of ``fn``, in ns per call.
    """
    runs = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter_ns() - started) / n)
    return min(runs)


async def abest_ns(
    fns: list[Callable[[], Any]], n: int, repeat: int = 7
) -> list[float]:
    """
    For each coroutine function, the best of ``repeat`` runs of ``n`` calls in
    ns per call; the functions take turns, so load on the machine hits them alike.
    """
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, into in zip(fns, runs, strict=True):
            started = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            into.append((time.perf_counter_ns() - started) / n)
    return [min(r) for r in runs]


class _Handler:
    """
    The parts of a grpc method handler the interceptor reads.
    """

    def __init__(self, behavior: Any) -> None:
        self.request_deserializer = lake_pb2.NearestRequest.FromString
        self.response_serializer = lake_pb2.FeaturesResponse.SerializeToString
        self.unary_unary = behavior
        self.stream_unary = None

    def _replace(self, **changes: Any) -> Any:
        new = _Handler(self.unary_unary)
        for key, value in changes.items():
            setattr(new, key, value)
        return new


class _Context:
    def code(self) -> None:
        return None


async def micro() -> None:
    """
    The in-process costs, each beside its baseline.
    """
    meter = Meter()
    record_one = best_ns(
        lambda: meter.record("acme", "FeaturesNearest", OK, items_out=10, bytes_in=20),
        200_000,
    )
    keys = [(f"t{i}", f"Op{i % 15}") for i in range(1000)]
    spread_keys = iter(keys * 1000)
    record_many = best_ns(
        lambda: meter.record(*next(spread_keys), OK, items_out=10), 200_000, repeat=1
    )
    request = lake_pb2.NearestRequest(lon=1.5, lat=2.5, k=10).SerializeToString()
    response = lake_pb2.FeaturesResponse(
        matches=[
            lake_pb2.FeatureMatch(feature=lake_pb2.Feature(id=f"f{i}", lon=i, lat=i))
            for i in range(10)
        ]
    )

    async def behavior(req: Any, context: Any) -> Any:
        return response

    plain = _Handler(behavior)
    interceptor = MeteringInterceptor(meter)
    metered = interceptor.wrap(plain, "/lake.v1.Spatial/Nearest")
    context = _Context()
    _PRINCIPAL.set(Principal(tenant="acme", scope=Scope.WRITE))

    async def unwrapped() -> bytes:
        req = plain.request_deserializer(request)
        return plain.response_serializer(await plain.unary_unary(req, context))

    async def wrapped() -> bytes:
        out: bytes = await metered.unary_unary(request, context)
        return out

    off, on = await abest_ns([unwrapped, wrapped], 30_000)

    @asynccontextmanager
    async def transaction() -> AsyncIterator[None]:
        yield None

    timed = timed_db(transaction)

    async def untimed_tx() -> None:
        async with transaction():
            pass

    async def timed_tx() -> None:
        async with timed():
            pass

    async def charged_tx() -> None:
        _, token = open_charge()
        try:
            async with timed():
                pass
        finally:
            close_charge(token)

    async def charge_only() -> None:
        _, token = open_charge()
        try:
            async with transaction():
                pass
        finally:
            close_charge(token)

    tx_off, tx_outside, tx_bare, tx_on = await abest_ns(
        [untimed_tx, timed_tx, charge_only, charged_tx], 30_000
    )
    print("usage metering, in process (best of 7 runs)")
    print(f"  Meter.record, one row              {record_one:8.0f} ns/record")
    print(f"  Meter.record, 1,000 rows in turn   {record_many:8.0f} ns/record")
    print(
        f"  one call: unwrapped {off:.0f} ns, metered {on:.0f} ns:"
        f" {on - off:+.0f} ns/call"
    )
    print(
        f"  a transaction: {tx_off:.0f} ns, timed outside a call"
        f" {tx_outside - tx_off:+.0f} ns, inside a call {tx_on - tx_bare:+.0f} ns"
    )


async def wire(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    """
    Two Lakes on one database, metering on and off, interleaved rounds.
    """
    import grpc

    ports = {"on": free_port(), "off": free_port()}
    pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        for name, port in ports.items():
            env = lake_env(pg, redis, port)
            metered = name == "on" and not args.same
            env["LAKE_USAGE__ENABLED"] = str(metered).lower()
            pids[name] = stack.enter_context(process(["-m", "lake", "serve"], env)).pid
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}", "lake.ready")
        channels = {
            name: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            for name, port in ports.items()
        }
        try:
            stubs: dict[str, Any] = {
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
                    call = calls[name]
                    before = cpu_seconds(pids[name])
                    qps[name].append(await rate(args.calls, call, args.in_flight))
                    used = cpu_seconds(pids[name]) - before
                    cpu[name].append(used / args.calls * 1e6)
        finally:
            for ch in channels.values():
                await ch.close(None)
    ratios = [a / b for a, b in zip(qps["on"], qps["off"], strict=True)]
    print(f"\nSpatial.Nearest (cacheable), {args.in_flight} in flight, {args.rounds}")
    for name in ("on", "off"):
        print(
            f"  metering {name:<4} {spread(qps[name], 0)} calls/s,"
            f" server CPU {spread(cpu[name], 0)} us/call"
        )
    cpu_ratios = [b / a for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    mean = statistics.mean(ratios)
    print(f"  calls/s on / off      {spread(ratios)} (mean {mean:.3f})")
    print(f"  CPU per call off / on {spread(cpu_ratios)}")


def main() -> None:
    """
    Print the in-process costs; with --wire, the on/off ratio over gRPC too.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.metering",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--wire", action="store_true", help="Also over gRPC.")
    parser.add_argument(
        "--same",
        action="store_true",
        help="With --wire, metering off on both: the noise floor of the ratio.",
    )
    parser.add_argument("--features", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(micro())
    if args.wire:
        with bench_servers() as (pg, redis):
            asyncio.run(wire(args, pg, redis))


if __name__ == "__main__":
    main()
