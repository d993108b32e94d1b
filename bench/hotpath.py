"""
The hot path: what one read costs in Lake against the best raw query, side by side.

Run ``uv run python -m bench.hotpath`` (``--help`` for sizes). It starts PostgreSQL
and Redis from the embedded wheels, loads features into a fresh database and
measures spatial nearest-10, in interleaved rounds, at 1 and at 32 tasks:

- ``raw``: the store's SQL on a bare pool, one round trip, no reset on release;
- ``raw_tx``: the same query inside the tenant transaction Lake uses (BEGIN + role
  + tenant in one round trip, the query, COMMIT): what isolation itself costs;
- ``store``: ``PgSpatialStore.nearest`` (the tenant transaction plus Lake's code);
- ``miss`` / ``hit``: ``ServiceManager.coordinate()`` on unique requests (every one
  a cache miss) and on a small repeated set (cache hits).

It prints each rate's median with its spread over the rounds, the ratios measured
within each round (so machine drift cancels), and an ablation table: the per-call
cost in microseconds of each layer of ``coordinate()`` measured on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.run import bench_servers, rate, spread
from lake import deadline
from lake.codec import FEATURE_MATCHES, cache_key
from lake.config import load_settings
from lake.container import aresolve, create_container
from lake.logs import configure_logging, operation_context
from lake.manager import ServiceManager
from lake.models import Feature, FeatureMatch, Limits
from lake.operations import FeaturesNearest, UpsertFeatures
from lake.resilience import RetryPolicy
from lake.resources.embedded import Endpoint
from lake.stores.database import _setup_sql

TENANT = "bench"
NEAREST = (
    "SELECT id, lon, lat, properties,"
    " earth_distance(ll_to_earth($3, $2), ll_to_earth(lat, lon)) AS d"
    " FROM features WHERE tenant_id = $1"
    " ORDER BY ll_to_earth(lat, lon) <-> ll_to_earth($3, $2) LIMIT $4"
)
Path_ = Callable[[int], Awaitable[object]]


def _where(i: int) -> tuple[float, float]:
    r = random.Random(i)
    return r.uniform(-10, 30), r.uniform(35, 60)


async def _no_reset(conn: Any) -> None:
    """
    A raw pool at its best: no ``RESET ALL`` round trip on release.
    """


async def load(manager: ServiceManager, n: int) -> None:
    rng = random.Random(7)
    for i in range(0, n, 5000):
        feats = [
            Feature(f"f{j}", rng.uniform(-10, 30), rng.uniform(35, 60))
            for j in range(i, min(i + 5000, n))
        ]
        await manager.coordinate(UpsertFeatures(TENANT, feats))


def paths(manager: ServiceManager, spatial: Any, pool: Any) -> dict[str, Path_]:
    setup = _setup_sql(TENANT, {}, "")
    unique = iter(range(10**9))

    async def raw(i: int) -> object:
        lon, lat = _where(i)
        return await pool.fetch(NEAREST, TENANT, lon, lat, 10)

    async def raw_tx(i: int) -> object:
        lon, lat = _where(i)
        async with pool.acquire() as conn:
            await conn.execute(setup)
            rows = await conn.fetch(NEAREST, TENANT, lon, lat, 10)
            await conn.execute("COMMIT")
        return rows

    async def store(i: int) -> object:
        lon, lat = _where(i)
        return await spatial.nearest(TENANT, lon, lat, 10)

    async def miss(i: int) -> object:
        lon, lat = _where(1_000_000 + next(unique))  # never asked before
        return await manager.coordinate(FeaturesNearest(TENANT, lon, lat, k=10))

    async def hit(i: int) -> object:
        lon, lat = _where(i % 64)  # a small set, warmed before measuring
        return await manager.coordinate(FeaturesNearest(TENANT, lon, lat, k=10))

    return {"raw": raw, "raw_tx": raw_tx, "store": store, "miss": miss, "hit": hit}


async def measure(
    ways: dict[str, Path_], calls: int, tasks: int, rounds: int
) -> dict[str, list[float]]:
    """
    Calls/s of every path, one round after another, ``rounds`` times.
    """
    out: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            out[name].append(await rate(calls, way, tasks))
    return out


def report(tasks: int, qps: dict[str, list[float]]) -> None:
    print(f"\nspatial nearest-10, {tasks} task(s): calls/s median (min-max)")
    for name, values in qps.items():
        print(f"  {name:<7} {spread(values, 0)}")
    print("  ratios per round, median (min-max):")
    for name in ("store", "miss", "hit"):
        for base in ("raw", "raw_tx"):
            ratios = [a / b for a, b in zip(qps[name], qps[base], strict=True)]
            print(f"    {name:<5} / {base:<6} {spread(ratios)}")


def per_call_us(fn: Callable[[], object], n: int = 20_000) -> float:
    """
    Microseconds one call of ``fn`` costs (best of three runs).
    """
    return min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6


async def ablation() -> dict[str, float]:
    """
    The per-call cost of each layer of ``coordinate()``, each measured alone.
    """
    op = FeaturesNearest(TENANT, 12.5, 47.25, k=10)
    policy = RetryPolicy(attempts=3, timeout=30.0)
    matches = [FeatureMatch(Feature(f"f{i}", 1.0, 2.0, {}), 12.0) for i in range(10)]
    encoded = FEATURE_MATCHES.encode(matches)

    async def nothing() -> int:
        return 1

    def scopes() -> None:
        with deadline.deadline_scope(30.0):
            deadline.remaining()

    def logging_context() -> None:
        with operation_context(tenant=TENANT, operation="FeaturesNearest"):
            pass

    loop = asyncio.get_running_loop()
    n = 5_000
    started = loop.time()
    for _ in range(n):
        await policy.run(nothing)
    retry_us = (loop.time() - started) / n * 1e6
    started = loop.time()
    for _ in range(n):
        await nothing()
    retry_us -= (loop.time() - started) / n * 1e6
    return {
        "validate": per_call_us(lambda: op.validate(Limits())),
        "retry policy (success path)": retry_us,
        "deadline scope + remaining": per_call_us(scopes),
        "request id + log context": per_call_us(logging_context),
        "cache key": per_call_us(lambda: cache_key(TENANT, "spatial", op)),
        "encode 10 matches": per_call_us(lambda: FEATURE_MATCHES.encode(matches)),
        "decode 10 matches": per_call_us(lambda: FEATURE_MATCHES.decode(encoded)),
    }


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    db = f"lake_hot_{random.randrange(16**8):08x}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = pg.url.rsplit("/", 1)[0] + f"/{db}"
    settings = load_settings("testing")
    settings["postgres"].update(dsn=dsn, password=pg.password, max_size=args.pool)
    settings["redis"].update(url=redis.url, password=redis.password)
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    pool = await asyncpg.create_pool(
        dsn,
        password=pg.password or None,
        min_size=args.pool,
        max_size=args.pool,
        reset=_no_reset,
    )
    try:
        await load(manager, args.features)
        await pool.execute("VACUUM ANALYZE features")
        ways = paths(manager, await aresolve(container.spatial), pool)
        for way in ways.values():  # warm every path (and the cache for hits)
            await rate(200, way, 1)
        for tasks in (1, 32):
            report(tasks, await measure(ways, args.calls, tasks, args.rounds))
        print("\nper-call cost of each layer of coordinate(), microseconds:")
        for layer, us in (await ablation()).items():
            print(f"  {layer:<30} {us:7.1f}")
    finally:
        await pool.close()
        await manager.stop()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    """
    Parse sizes, start or name the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.hotpath",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=10)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with bench_servers() as (pg, redis):
        asyncio.run(run(args, pg, redis))


if __name__ == "__main__":
    main()
