"""
Resilience figures, measured in one run, each over several rounds.

Run ``uv run python -m bench.resilience`` (``--help`` for sizes). It starts
PostgreSQL and Redis from the embedded wheels (or uses LAKE_BENCH_POSTGRES_DSN /
LAKE_BENCH_REDIS_URL), puts a fault proxy of the test tree between Lake and
PostgreSQL (in a thread of its own), a cortex peer beside it, and prints:

1. ``open``: latency of ``ServiceManager.coordinate()`` while PostgreSQL's breaker
   is open (PostgreSQL refusing connections), p50 and p99; target p99 <= 1 ms.
2. ``recovery``: seconds from PostgreSQL accepting connections again to the first
   successful operation, with 32 tasks calling meanwhile; target <= 1 s.
3. ``amplification``: calls the cortex peer received / client requests while it
   answers every call UNAVAILABLE, from a closed breaker; target <= 1.2.
4. ``overhead``: spatial nearest-10 throughput (32 tasks, cache hits and unique
   requests) with the protection layer on / off (breakers disabled, no fair-share
   gate, no adaptive timeouts), in the same round; target >= 0.95. A second Lake
   with protection off, measured alongside, shows the noise floor (off / off).
5. ``fairness``: a second tenant's p99 while a first floods the pool with 64 tasks /
   its p99 alone; target <= 2. The flood holds connections over a database 5 ms
   away (the pool is what is shared); for contrast, a flood of heavy aggregates
   that takes the database's CPU, which no pool-side share can give back.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from dependency_injector import providers

from bench.run import bench_servers, rate, spread
from lake.config import load_settings
from lake.container import Container, aresolve, create_container
from lake.errors import CircuitOpenError, LakeError, TransientError
from lake.logs import configure_logging
from lake.manager import ServiceManager
from lake.mesh.peers import CortexPeer, PeerServer
from lake.models import Collection, Feature, Point
from lake.operations import (
    AggregatePoints,
    CreateCollection,
    FeaturesNearest,
    SearchText,
    UpsertFeatures,
    WritePoints,
)
from lake.protection import BreakerSettings, BreakerState, Protection
from lake.resources.embedded import Endpoint
from lake.stores.lease import PEER_FRESH_S
from tests.faults.proxy import ProxyThread

TENANTS = ("flood", "quiet")
NOW = datetime.now(UTC).replace(microsecond=0)


def _where(i: int) -> tuple[float, float]:
    r = random.Random(i)
    return r.uniform(-10, 30), r.uniform(35, 60)


def nearest(tenant: str, i: int) -> FeaturesNearest:
    lon, lat = _where(i)
    return FeaturesNearest(tenant, lon, lat, k=10)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _settled(call: Awaitable[object]) -> bool:
    try:
        await call
    except LakeError:
        return False
    return True


class Harness:
    """
    Two Lakes on one database: one through the fault proxy, one straight; the
    second also in a variant with the protection layer off.
    """

    def __init__(self, dsn: str, pg: Endpoint, redis: Endpoint, proxy: ProxyThread):
        self.dsn, self.pg, self.redis, self.proxy = dsn, pg, redis, proxy
        self.cortex = PeerServer(CortexPeer(dim=16))
        self.managers: list[ServiceManager] = []
        self.share: float | None = None  # the configured default

    def settings(self, dsn: str, pool: int) -> dict[str, Any]:
        settings = load_settings("testing")
        settings["postgres"].update(dsn=dsn, password=self.pg.password, max_size=pool)
        settings["redis"].update(url=self.redis.url, password=self.redis.password)
        settings["mesh"]["peers"] = {"cortex": self.cortex.address}
        settings["operations"]["attempts"] = 3
        if self.share is not None:
            settings["protection"]["fair_share"]["share"] = self.share
        return settings

    async def lake(self, dsn: str, pool: int, *, protected: bool) -> ServiceManager:
        container: Container = create_container(self.settings(dsn, pool))
        if not protected:
            off = BreakerSettings(enabled=False)
            container.protection.override(
                providers.Object(
                    Protection(breaker=off, redis_breaker=off, adaptive=False)
                )
            )
            container.pg_gate.override(providers.Object(None))
        manager: ServiceManager = await aresolve(container.manager)
        await manager.start()
        self.managers.append(manager)
        return manager

    async def close(self) -> None:
        for manager in self.managers:
            await manager.stop()


async def load(manager: ServiceManager, n: int) -> None:
    rng = random.Random(7)
    step = timedelta(days=1) / (10 * n)
    for i in range(0, 10 * n, 10_000):
        points = [Point(NOW - j * step, rng.random()) for j in range(i, i + 10_000)]
        await manager.coordinate(WritePoints("flood", "load", points))
    for tenant in TENANTS:
        for i in range(0, n, 5000):
            feats = [
                Feature(f"f{j}", rng.uniform(-10, 30), rng.uniform(35, 60))
                for j in range(i, min(i + 5000, n))
            ]
            await manager.coordinate(UpsertFeatures(tenant, feats))


async def breaker_round(
    manager: ServiceManager, proxy: ProxyThread, calls: int
) -> tuple[list[float], float]:
    """
    PostgreSQL refused: open-breaker latencies, then the recovery time under load.
    """
    breaker = manager._protection.postgres.breaker
    unique = iter(range(10**9))

    async def one() -> bool:
        return await _settled(manager.coordinate(nearest("quiet", next(unique))))

    await asyncio.to_thread(proxy.disable)
    while breaker.state is not BreakerState.OPEN:
        await asyncio.gather(*(one() for _ in range(8)))
    latencies: list[float] = []
    while len(latencies) < calls:
        started = time.perf_counter()
        try:
            await manager.coordinate(nearest("quiet", next(unique)))
        except CircuitOpenError:
            latencies.append(time.perf_counter() - started)
        except LakeError:
            pass  # a half-open probe that failed: not an open-breaker answer
    # Recovery: 32 callers keep calling; PostgreSQL comes back at t0.
    first_ok: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def caller() -> None:
        # A client backs off a little after a failure (a real one waits out the
        # pushback): spinning on the answers would starve the proxy's thread.
        while not first_ok.done():
            if await one():
                if not first_ok.done():
                    first_ok.set_result(time.perf_counter())
            else:
                await asyncio.sleep(0.005)

    callers = [asyncio.create_task(caller()) for _ in range(32)]
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    await asyncio.to_thread(proxy.enable)
    recovered = await asyncio.wait_for(first_ok, 30) - t0
    await asyncio.gather(*callers)
    return latencies, recovered


async def amplification_round(
    manager: ServiceManager, peer: CortexPeer, n: int
) -> float:
    """
    Calls the failing peer received per client request, from a closed breaker.
    """
    breaker = manager._protection.peer("cortex").breaker
    peer.failing = False
    while breaker.state is not BreakerState.CLOSED:  # heal it first
        await _settled(manager.coordinate(SearchText("quiet", "docs", "warm", k=3)))
        await asyncio.sleep(0.05)
    peer.failing = True
    peer.calls = 0
    await rate(
        n,
        lambda i: _settled(
            manager.coordinate(SearchText("quiet", "docs", f"text {i}", k=3))
        ),
        8,
    )
    peer.failing = False
    return peer.calls / n


async def on_off(
    lakes: dict[str, ServiceManager], kind: str, calls: int, unique: Any
) -> dict[str, float]:
    """
    Throughput and CPU per call of each Lake (``on``, ``off`` and ``control``, a
    second Lake with protection off) over 21 alternations of ``calls / 6``
    calls each, the order rotating (so neither a neighbour's load nor a drift
    falls on one side); each alternation's ratios to ``off``, their medians.

    ``control / off`` is the noise floor: two identical Lakes differ by about
    that much from round to round.
    """
    ratios: dict[str, list[float]] = {"wall": [], "cpu": [], "control": []}
    names = list(lakes)

    def caller(name: str) -> Callable[[int], Awaitable[object]]:
        async def call(i: int, m: ServiceManager = lakes[name]) -> object:
            j = i % 64 if kind == "hit" else next(unique)
            return await m.coordinate(nearest("quiet", j))

        return call

    for name in names:  # a Lake's first calls (its pool, its cache) measure nothing
        await rate(calls // 6, caller(name), 32)
    for turn in range(21):
        figures = {}
        for name in names[turn % 3 :] + names[: turn % 3]:
            call = caller(name)
            await rate(100, call, 32)  # warm (the hits' entries)
            cpu = time.process_time()
            qps = await rate(calls // 6, call, 32)
            figures[name] = (qps, (time.process_time() - cpu) / (calls // 6))
        ratios["wall"].append(figures["on"][0] / figures["off"][0])
        ratios["cpu"].append(figures["off"][1] / figures["on"][1])
        ratios["control"].append(figures["control"][0] / figures["off"][0])
    return {name: statistics.median(values) for name, values in ratios.items()}


async def p99_of(call: Callable[[int], Awaitable[object]], n: int) -> float:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - started)
    return pct(latencies, 0.99)


def aggregate(i: int) -> AggregatePoints:
    """
    A heavy read of the flood tenant: a day of points into hourly buckets, from a
    start that differs per call (so no cache answers it).
    """
    start = NOW - timedelta(days=1) + timedelta(microseconds=i % 10**9)
    return AggregatePoints("flood", "load", start, NOW, timedelta(hours=1))


async def fairness_round(
    manager: ServiceManager, n: int, flood_op: Callable[[int], Any]
) -> tuple[float, float]:
    """
    The quiet tenant's p99 alone, then while the flood tenant runs 64 tasks of
    ``flood_op``.
    """
    unique = iter(range(2 * 10**9, 3 * 10**9))

    async def quiet(_: int) -> object:
        return await manager.coordinate(nearest("quiet", next(unique)))

    alone = await p99_of(quiet, n)
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            try:
                await manager.coordinate(flood_op(next(unique)))
            except TransientError as exc:
                # A refused client waits out the pushback, as gRPC's retry policy
                # does with grpc-retry-pushback-ms; spinning on instant refusals
                # would measure the flood's own CPU in Lake, not the share.
                await asyncio.sleep(min(exc.retry_after_s or 0.0, 1.0))
            except LakeError:
                pass
            await asyncio.sleep(0)  # a client's next call comes over the network

    flooders = [asyncio.create_task(flood()) for _ in range(64)]
    await asyncio.sleep(0.2)
    loaded = await p99_of(quiet, n)
    stop.set()
    await asyncio.gather(*flooders)
    return alone, loaded


async def pool_fairness_round(
    manager: ServiceManager, proxy: ProxyThread, n: int
) -> tuple[float, float]:
    """
    A flood that holds the pool without burning the database's CPU: 5 ms each way
    on every round trip (a database across a network), the flood's reads as
    cheap as the quiet tenant's.
    """
    await asyncio.to_thread(proxy.latency, 5)
    try:
        return await fairness_round(manager, n, lambda i: nearest("flood", i))
    finally:
        await asyncio.to_thread(proxy.clear)


def report(
    opens: list[tuple[float, float]],
    recoveries: list[float],
    amplification: list[float],
    overhead: dict[str, list[float]],
    cpu_ratio: dict[str, list[float]],
    noise: dict[str, list[float]],
) -> None:
    p50s = [p50 * 1000 for p50, _ in opens]
    p99s = [p99 * 1000 for _, p99 in opens]
    print(f"  open breaker latency p50 ms      {spread(p50s, 3)}")
    print(f"  open breaker latency p99 ms      {spread(p99s, 3)}   target <= 1")
    back = spread(recoveries, 3)
    print(f"  recovery after PostgreSQL s      {back}   target <= 1")
    amp = spread(amplification, 3)
    print(f"  peer attempts / requests         {amp}   target <= 1.2")
    for kind, ratios in overhead.items():
        figure = spread(ratios, 3)
        print(f"  protection on / off ({kind:<4})     {figure}   target >= 0.95")
    for kind, ratios in cpu_ratio.items():
        figure = spread(ratios, 3)
        print(f"  CPU per call off / on ({kind:<4})   {figure}")
    for kind, ratios in noise.items():
        figure = spread(ratios, 3)
        print(f"  noise: off / off again ({kind:<4})  {figure}")


def fair(fairness: list[tuple[float, float]], share: float | None) -> None:
    ratios = [loaded / alone for alone, loaded in fairness]
    alone_ms = [alone * 1000 for alone, _ in fairness]
    loaded_ms = [loaded * 1000 for _, loaded in fairness]
    print(f"  quiet tenant p99 alone ms        {spread(alone_ms, 2)}")
    under = spread(loaded_ms, 2)
    print(f"  quiet tenant p99 under flood ms  {under}   (share {share or 'default'})")
    print(f"  flooded / alone p99              {spread(ratios, 2)}   target <= 2")


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    db = f"lake_res_{random.randrange(16**8):08x}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = pg.url.rsplit("/", 1)[0] + f"/{db}"
    host_port = dsn.split("@", 1)[-1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    # In a thread of its own: forwarding in Lake's loop would slow Lake's calls.
    proxy = ProxyThread(host, int(port)).__enter__()
    proxied = dsn.replace(host_port, proxy.address)
    h = Harness(dsn, pg, redis, proxy)
    if args.share is not None:
        h.share = args.share
    await h.cortex.start()
    try:
        on = await h.lake(dsn, args.pool, protected=True)
        off = await h.lake(dsn, args.pool, protected=False)
        control = await h.lake(dsn, args.pool, protected=False)
        lakes = {"on": on, "off": off, "control": control}
        faulty = await h.lake(proxied, args.pool, protected=True)
        await load(on, args.features)
        # A Lake trusts its copy of the cache generations (answers hits without a
        # round trip) once its peers have counted it: until then its hits are
        # slower, which is not what the overhead figures are about.
        for manager in lakes.values():
            await manager.coordinate(nearest("quiet", 0))
        await asyncio.sleep(PEER_FRESH_S + 0.5)
        await on.coordinate(CreateCollection("quiet", Collection("docs", 16)))
        cortex = h.cortex.peer
        assert isinstance(cortex, CortexPeer)

        opens: list[tuple[float, float]] = []
        recoveries: list[float] = []
        amplification: list[float] = []
        overhead: dict[str, list[float]] = {"hit": [], "miss": []}
        cpu_ratio: dict[str, list[float]] = {"hit": [], "miss": []}
        noise: dict[str, list[float]] = {"hit": [], "miss": []}
        fairness: list[tuple[float, float]] = []
        heavy: list[tuple[float, float]] = []
        unique = iter(range(10**9, 2 * 10**9))
        for _ in range(args.rounds):
            if args.only == "fairness":
                fairness.append(
                    await pool_fairness_round(faulty, proxy, args.fair_calls)
                )
                heavy.append(await fairness_round(on, args.fair_calls, aggregate))
                continue
            latencies, recovered = await breaker_round(faulty, proxy, args.calls)
            opens.append((pct(latencies, 0.5), pct(latencies, 0.99)))
            recoveries.append(recovered)
            amplification.append(await amplification_round(on, cortex, args.calls // 4))
            for kind in ("hit", "miss"):
                figures = await on_off(lakes, kind, args.calls, unique)
                overhead[kind].append(figures["wall"])
                cpu_ratio[kind].append(figures["cpu"])
                noise[kind].append(figures["control"])
            fairness.append(await pool_fairness_round(faulty, proxy, args.fair_calls))
            heavy.append(await fairness_round(on, args.fair_calls, aggregate))

        print(f"\nresilience, {args.rounds} rounds: median (min-max)")
        if args.only != "fairness":
            report(opens, recoveries, amplification, overhead, cpu_ratio, noise)
        print("  a flood holding the pool (5 ms round trips):")
        fair(fairness, h.share)
        print("  a flood of heavy aggregates (the database's CPU is the bottleneck):")
        fair(heavy, h.share)
    finally:
        await h.close()
        await h.cortex.stop(None)
        proxy.__exit__(None, None, None)
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    """
    Parse sizes, start or name the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.resilience",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--fair-calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument(
        "--share", type=float, default=None, help="protection.fair_share.share"
    )
    parser.add_argument(
        "--only", choices=["fairness"], help="measure only this figure (iterating)"
    )
    args = parser.parse_args()
    configure_logging("console", "ERROR")
    with bench_servers() as (pg, redis):
        asyncio.run(run(args, pg, redis))


if __name__ == "__main__":
    main()
