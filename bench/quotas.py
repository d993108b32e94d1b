"""
What quotas cost on the hot path, and whether two instances hold one budget.

Run ``uv run python -m bench.quotas`` (``--help`` for sizes). It starts PostgreSQL
and Redis from the embedded wheels (or uses LAKE_BENCH_POSTGRES_DSN /
LAKE_BENCH_REDIS_URL) and prints:

- the cost of one ``RateQuotas.admit()`` in microseconds (one task, so it is the
  latency a call pays), for: an unlimited tenant (the default), a limited one that
  is admitted through Redis with each strategy (``moving-window``,
  ``sliding-window-counter``), one call per hit and with the default lease (5 %
  of the budget per hit), one refused (answered from the local refusal memory),
  and the local token bucket (Redis down);
- the storage counter (``charge()``): a transaction with it against one without;
- ``coordinate()`` of a cached spatial read with a read quota set (never reached)
  against none, in interleaved rounds at 1 and 32 tasks: the ratio on / off;
- two instances on one database and Redis with ``read_per_s = 20`` hammered for
  ``--seconds``: accepted calls against the 20/s x seconds budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg

from bench.run import bench_servers, rate, spread
from lake.config import load_settings
from lake.container import Container, aresolve, create_container
from lake.errors import QuotaExceededError
from lake.logs import configure_logging
from lake.manager import ServiceManager
from lake.models import Feature
from lake.operations import FeaturesNearest, UpsertFeatures
from lake.quotas.policy import Caps, QuotaBook
from lake.quotas.rates import RateQuotas
from lake.resources.embedded import Endpoint
from lake.resources.redis import open_redis
from lake.stores.quotas import charge

TENANT = "bench"


async def per_call_us(call: Callable[[], Awaitable[object]], n: int) -> float:
    """
    Median over 5 runs of the mean microseconds of ``call()``, one task.
    """
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            await call()
        runs.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(runs)


async def admit_costs(redis_end: Endpoint, n: int) -> dict[str, float]:
    """
    One admit() by path, microseconds.
    """
    costs: dict[str, float] = {}
    # A generous socket timeout: a 100 ms stall of this loaded machine would
    # send the quotas local (fail open) and measure the token bucket instead.
    async with open_redis(
        url=redis_end.url, password=redis_end.password, socket_timeout=2.0
    ) as redis:
        free = RateQuotas(QuotaBook({}), redis)
        costs["unlimited (0)"] = await per_call_us(
            lambda: free.admit(TENANT, "read"), n
        )
        # A budget never reached (1e6/s): every admitted call, by lease share.
        for strategy, lease in (
            ("moving-window", 0.0),
            ("sliding-window-counter", 0.0),
            ("sliding-window-counter", 0.05),
        ):
            await redis.flushdb()
            book = QuotaBook({"read_per_s": 1e6})
            quotas = RateQuotas(book, redis, strategy=strategy, lease=lease)
            costs[f"admitted, {strategy}, lease {lease:g}"] = await per_call_us(
                partial(quotas.admit, TENANT, "read"), n
            )
            assert quotas.local_calls == 0, "measured the local fallback"
        # A window of 60 s holding 1 call: every call after the first is refused.
        tight = RateQuotas(QuotaBook({"read_per_s": 1 / 60}), redis, window_s=60)

        async def refused() -> None:
            with contextlib.suppress(QuotaExceededError):
                await tight.admit(TENANT, "read")

        costs["limited, refused (local memory)"] = await per_call_us(refused, n)
        # Redis down: the token bucket (no Redis) at a rate never reached.
        local = RateQuotas(QuotaBook({"read_per_s": 1e9}), None)
        costs["local token bucket (Redis down)"] = await per_call_us(
            lambda: local.admit(TENANT, "read"), n
        )
    return costs


def settings_for(dsn: str, pg: Endpoint, redis: Endpoint, read_per_s: float) -> Any:
    settings = load_settings("testing")
    settings["postgres"].update(dsn=dsn, password=pg.password)
    settings["redis"].update(url=redis.url, password=redis.password)
    settings["quotas"]["default"]["read_per_s"] = read_per_s
    return settings


async def started(settings: Any) -> tuple[Container, ServiceManager]:
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    return container, manager


async def hot_path(
    managers: dict[str, ServiceManager], calls: int, rounds: int
) -> None:
    """
    coordinate() of a cached read, quota set (never reached) vs none.
    """
    ops = [FeaturesNearest(TENANT, 0.001 * (i % 20), 0.0, k=10) for i in range(20)]

    def way(m: ServiceManager) -> Callable[[int], Awaitable[object]]:
        return lambda i: m.coordinate(ops[i % len(ops)])

    for m in managers.values():
        await rate(200, way(m), 1)  # warm the cache
    for tasks in (1, 32):
        rates: dict[str, list[float]] = {name: [] for name in managers}
        ratios = []
        for _ in range(rounds):
            for name, m in managers.items():
                rates[name].append(await rate(calls, way(m), tasks))
            ratios.append(rates["on"][-1] / rates["off"][-1])
        line = "  ".join(f"{n} {spread(r, 0)}/s" for n, r in rates.items())
        print(f"  {tasks:>2} tasks: {line}  ratio on/off {spread(ratios)}")


async def shared_budget(managers: list[ServiceManager], seconds: float) -> None:
    """
    Both instances hammer one tenant's 20/s read quota; count what passes.
    """
    op = FeaturesNearest("shared", 0.0, 0.0, k=1)
    accepted = refused = 0
    stop = time.monotonic() + seconds

    async def client(m: ServiceManager) -> None:
        nonlocal accepted, refused
        while time.monotonic() < stop:
            try:
                await m.coordinate(op)
                accepted += 1
            except QuotaExceededError as exc:
                refused += 1
                await asyncio.sleep(min(exc.retry_after or 0.01, 0.05))

    await asyncio.gather(*(client(m) for m in managers for _ in range(4)))
    budget = 20 * seconds
    print(
        f"  accepted {accepted} of a {budget:g}-call budget"
        f" ({accepted / budget:.2f}), refused {refused}"
    )


async def charge_cost(dsn: str, pg: Endpoint, n: int) -> dict[str, float]:
    """
    A write transaction with the storage counter update against one without, one
    task (both commit, so both wait for the WAL flush).
    """
    conn = await asyncpg.connect(dsn, password=pg.password or None)
    caps = Caps(features=10**9)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (x int)")
    try:

        async def write() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_rows VALUES (1)")

        async def charged() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_rows VALUES (1)")
                await charge(conn, TENANT, caps, features=1)

        costs = {}
        for _ in range(2):  # interleaved: the second pair is the one reported
            costs["write transaction (one INSERT)"] = await per_call_us(write, n)
            costs["same + charge()"] = await per_call_us(charged, n)
        return costs
    finally:
        await conn.close()


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    print("one admit(), microseconds (one task):")
    for path, us in (await admit_costs(redis, args.admits)).items():
        print(f"  {path:<45} {us:7.1f}")
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    db = f"lake_quota_{random.randrange(16**8):08x}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = pg.url.rsplit("/", 1)[0] + f"/{db}"
    parts = [
        await started(settings_for(dsn, pg, redis, rate_)) for rate_ in (0, 1e6, 20, 20)
    ]
    try:
        print("\nstorage counter, microseconds per write (one task):")
        for path, us in (await charge_cost(dsn, pg, args.admits)).items():
            print(f"  {path:<45} {us:7.1f}")
        off, on = parts[0][1], parts[1][1]
        features = [Feature(str(i), 0.001 * i, 0.0, {}) for i in range(500)]
        await off.coordinate(UpsertFeatures(TENANT, features))
        print("\ncoordinate() of a cached read, quota set (never reached) / none:")
        await hot_path({"off": off, "on": on}, args.calls, args.rounds)
        print(f"\ntwo instances, read_per_s = 20, {args.seconds:g} s:")
        await shared_budget([parts[2][1], parts[3][1]], args.seconds)
    finally:
        for _, manager in parts:
            await manager.stop()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    """
    Parse sizes, start or name the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.quotas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--admits", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with bench_servers() as (pg, redis):
        asyncio.run(run(args, pg, redis))


if __name__ == "__main__":
    main()
