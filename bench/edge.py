"""
Lake's own CPU per gRPC call, without grpcio: the server's interceptors and
servicer driven in process, on a real manager over real PostgreSQL and Redis.

Run ``uv run python -m bench.edge`` (``--help`` for sizes). Over the wire
(``bench.grpc_path``) a call's cost is grpcio's share plus Lake's, measured from
``/proc`` on a busy 2-core machine; here Lake's share alone is measured as CPU time
(``time.process_time``) per call, so a change of a few microseconds shows. The
interceptors are run as grpcio runs them (each ``intercept_service`` per call, the
wrapped handler's deserialiser, behaviour and serialiser), with a context that
answers what they ask (metadata, peer, deadline).

It prints the CPU per call of a cached ``Spatial.Nearest`` (a small repeated set,
answered from the lease and the in-process entries), of a unique one (a miss), and
an ablation: the same cached call with each interceptor left out in turn, and
the servicer and the manager alone, so each layer's cost per call is a measured
difference.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import asyncpg

from bench.run import bench_servers, spread
from lake.api.auth import _PRINCIPAL, Principal, hash_token
from lake.api.servicer import SpatialServicer
from lake.api.wrapped import chained
from lake.config import load_settings
from lake.container import aresolve, create_container
from lake.manager import ServiceManager
from lake.models import Feature
from lake.operations import FeaturesNearest, UpsertFeatures
from lake.resources.embedded import Endpoint
from lake.tokens import Scope
from lake.v1 import lake_pb2, lake_pb2_grpc

TENANT = "bench"
TOKEN = "bench-token"  # noqa: S105 -- a throwaway token for a local benchmark
METHOD = "/lake.v1.Spatial/Nearest"
Call = Callable[[int], Awaitable[object]]


class _Details:
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """
    What the interceptors and servicer ask of grpcio's ServicerContext.
    """

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self._deadline = time.time() + 10.0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.time())

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def add_done_callback(self, callback: Any) -> None:
        pass

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        msg = f"aborted: {code} {details}"
        raise RuntimeError(msg)


class _Collect:
    """
    Stands in for the grpc server: keeps the generic handlers servicers add.
    """

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
        pass


async def _handler(interceptors: Sequence[Any], details: _Details, generic: Any) -> Any:
    # As grpcio's _run_interceptor: each interceptor's intercept_service per call.
    async def run(index: int, d: Any) -> Any:
        if index == len(interceptors):
            return generic.service(d)
        return await interceptors[index].intercept_service(
            lambda dd: run(index + 1, dd), d
        )

    return await run(0, details)


def edge_call(
    interceptors: Sequence[Any], servicer: Any, metadata: tuple[tuple[str, str], ...]
) -> Callable[[lake_pb2.NearestRequest], Awaitable[bytes]]:
    """
    One Spatial.Nearest as grpcio would serve it, from request bytes to reply bytes.
    """
    collect = _Collect()
    server: Any = collect  # takes what a server takes of a servicer
    lake_pb2_grpc.add_SpatialServicer_to_server(servicer, server)
    generic = collect.handlers[0]
    details = _Details(METHOD, metadata)

    async def call(request: lake_pb2.NearestRequest) -> bytes:
        handler = await _handler(interceptors, details, generic)
        raw = request.SerializeToString()
        decode = handler.request_deserializer
        message = raw if decode is None else decode(raw)
        reply = await handler.unary_unary(message, _Context(metadata))
        encode = handler.response_serializer
        return reply if encode is None else encode(reply)  # type: ignore[no-any-return]

    return call


def where(i: int) -> tuple[float, float]:
    r = random.Random(i)
    return r.uniform(-10, 30), r.uniform(35, 60)


def request(i: int) -> lake_pb2.NearestRequest:
    lon, lat = where(i)
    return lake_pb2.NearestRequest(lon=lon, lat=lat, k=10)


def _cached(serve: Callable[[Any], Awaitable[Any]], i: int) -> Awaitable[Any]:
    # One of 64 repeated requests (cached after the first round).
    return serve(request(i % 64))


async def cpu_per_call(call: Call, n: int, tasks: int) -> float:
    """
    Process CPU microseconds per call of ``n`` calls on ``tasks`` tasks.

    Each call yields to the loop once first, as a served call does (grpcio reads
    its request): a hit that never waits would otherwise starve the lease's polls.
    """
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await asyncio.sleep(0)
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (time.process_time() - started) / n * 1e6


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    db = f"lake_edge_{random.randrange(16**8):08x}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    settings = load_settings("testing")
    settings["postgres"].update(
        dsn=pg.url.rsplit("/", 1)[0] + f"/{db}", password=pg.password
    )
    settings["redis"].update(url=redis.url, password=redis.password)
    settings["auth"]["tokens"] = {hash_token(TOKEN): TENANT}
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    try:
        await _bench(args, container, manager)
    finally:
        await manager.stop()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


async def _bench(args: argparse.Namespace, container: Any, manager: Any) -> None:
    rng = random.Random(7)
    feats = [
        Feature(f"f{j}", rng.uniform(-10, 30), rng.uniform(35, 60))
        for j in range(args.features)
    ]
    for i in range(0, len(feats), 5000):
        await manager.coordinate(UpsertFeatures(TENANT, feats[i : i + 5000]))
    keyring = await aresolve(container.keyring)
    keyring.pending = False
    layers = list(await aresolve(container.layers))
    interceptors = chained(layers)
    servicer = SpatialServicer(manager)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    names = [type(i).__name__ for i in layers]
    calls: dict[str, Call] = {}
    full = edge_call(interceptors, servicer, metadata)
    calls["cached call, every layer"] = lambda i: full(request(i % 64))
    unique = iter(range(10**6, 10**9))
    calls["unique call (a miss)"] = lambda i: full(request(next(unique)))
    apart = edge_call(layers, servicer, metadata)
    calls["  the layers as separate interceptors"] = lambda i: apart(request(i % 64))
    for left_out, name in enumerate(names):
        if name == "AuthInterceptor":  # the others read the principal it sets
            continue
        kept = [x for j, x in enumerate(layers) if j != left_out]
        without = edge_call(chained(kept), servicer, metadata)
        calls[f"  without {name}"] = partial(_cached, without)

    bare = edge_call([], servicer, metadata)

    async def servicer_alone(i: int) -> object:
        token = _PRINCIPAL.set(Principal(tenant=TENANT, scope=Scope.WRITE))
        try:
            return await bare(request(i % 64))
        finally:
            _PRINCIPAL.reset(token)

    calls["  the servicer alone (no interceptor)"] = servicer_alone

    async def manager_alone(i: int) -> object:
        lon, lat = where(i % 64)
        return await manager.coordinate(FeaturesNearest(TENANT, lon, lat, k=10))

    calls["  manager.coordinate() alone"] = manager_alone

    async def nothing(i: int) -> object:
        return None

    calls["  nothing (the yield each call makes)"] = nothing
    # Warm: fill the cache, and let the lease warm up (it trusts nothing for its
    # first 2 s + lease), reading all along so that its polls keep pace.
    warm_until = time.monotonic() + 3.0
    while time.monotonic() < warm_until:
        for call in calls.values():
            await cpu_per_call(call, 64, 1)
    figures: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            figures[name].append(await cpu_per_call(call, args.calls, args.tasks))
    versions = await container.versions()
    print(f"\nLake's CPU per Spatial.Nearest call without grpcio, {args.tasks} task(s)")
    print(f"  {'path':<42} us/call median (min-max)")
    for name, values in figures.items():
        print(f"  {name:<42} {spread(values, 1)}")
    print(f"  (version reads {versions.stats()})")


def main() -> None:
    """
    Parse sizes, start the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=1)
    args = parser.parse_args()
    with bench_servers() as (pg, redis):
        asyncio.run(run(args, pg, redis))


if __name__ == "__main__":
    main()
