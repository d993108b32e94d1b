"""
Read replicas: read throughput with one primary + one replica / the primary alone.

Run ``uv run python -m bench.replicas`` (``--help`` for sizes). It starts a
PostgreSQL primary and a streaming standby from the embedded binaries
(``tests/faults/ha.py``, asynchronous replication) and Redis, loads features and
points through Lake, then builds two Lakes in this process on the same database:
one on the primary alone, one with ``postgres.replica_dsns`` naming the standby.
Each round measures both, in alternating order, on two reads with 16 tasks:

- ``nearest``: spatial nearest-10 at a new point every call (every read a load;
  ~1 ms of Lake's CPU each: bound by Lake's event loop);
- ``aggregate``: an hourly average over 100k points (tens of ms of the database's
  CPU each: bound by the database).

It prints each rate's median and the per-round ratio (with replica / alone) with
its spread (min-max over the rounds), and the share of reads the replica served.
On a 2-core machine the primary, the standby, Lake and this client share the same
cores, so a second server adds no CPU: expect ratios near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.run import rate, spread
from lake.config import load_settings
from lake.container import aresolve, create_container
from lake.logs import configure_logging
from lake.manager import ServiceManager
from lake.models import Feature, Point
from lake.operations import (
    AggregatePoints,
    FeaturesNearest,
    UpsertFeatures,
    WritePoints,
)
from lake.resources.embedded import EmbeddedRedis, Endpoint
from lake.stores.replicas import ReplicaSet
from tests.faults import ha
from tests.waiting import eventually

TENANT = "bench"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
Call = Callable[[int], Awaitable[object]]


@contextlib.contextmanager
def servers(base: Path) -> Iterator[tuple[ha.Pair, Endpoint]]:
    """A primary, its asynchronous standby and a Redis under ``base``."""
    redis = EmbeddedRedis(base / "redis")
    try:
        endpoint = redis.start()
        with ha.pair(base / "pg", synchronous=False) as ends:
            yield ends, endpoint
    finally:
        redis.stop()


def settings(ends: ha.Pair, redis: Endpoint, *, replica: bool) -> dict[str, Any]:
    values = load_settings("testing")
    values["postgres"].update(dsn=ha.node_url(ends.primary), password=ends.password)
    values["redis"].update(url=redis.url, password=redis.password)
    values["operations"]["timeout"] = 30.0
    if replica:
        # The replica's pool as large as the primary's: the servers are compared.
        values["postgres"].update(
            replica_dsns=[ha.node_url(ends.standby)],
            replica_max_size=values["postgres"]["max_size"],
        )
    return values


async def load(manager: ServiceManager, features: int, points: int) -> None:
    rng = random.Random(7)
    for i in range(0, features, 5000):
        batch = [
            Feature(f"f{j}", rng.uniform(-10, 30), rng.uniform(35, 60))
            for j in range(i, min(i + 5000, features))
        ]
        await manager.coordinate(UpsertFeatures(TENANT, batch))
    start = NOW - timedelta(hours=20)
    step = timedelta(hours=19) / points
    for i in range(0, points, 10_000):
        series = [
            Point(start + j * step, float(j % 97))
            for j in range(i, min(i + 10_000, points))
        ]
        await manager.coordinate(WritePoints(TENANT, "load", series, {"host": "a"}))


def calls(manager: ServiceManager, unique: Iterator[int]) -> dict[str, Call]:
    # ``unique`` is shared by both Lakes: they share Redis, and a key one of them
    # cached would be a hit for the other.
    async def nearest(_: int) -> object:
        r = random.Random(next(unique))
        op = FeaturesNearest(TENANT, r.uniform(-10, 30), r.uniform(35, 60), 10)
        return await manager.coordinate(op)

    async def aggregate(_: int) -> object:
        # A window of its own per call (a new cache key): every call a load.
        end = NOW - timedelta(microseconds=next(unique))
        op = AggregatePoints(
            TENANT, "load", end - timedelta(hours=20), end, timedelta(hours=1), "avg"
        )
        return await manager.coordinate(op)

    return {"nearest": nearest, "aggregate": aggregate}


def served(manager: ServiceManager) -> int:
    c = manager.components
    assert c is not None
    return c.replicas.stats()["routed"]["replica"] if c.replicas is not None else 0


async def run(args: argparse.Namespace, ends: ha.Pair, redis: Endpoint) -> None:
    alone_container = create_container(settings(ends, redis, replica=False))
    alone: ServiceManager = await aresolve(alone_container.manager)
    await alone.start()
    await load(alone, args.features, args.points)
    both_container = create_container(settings(ends, redis, replica=True))
    both: ServiceManager = await aresolve(both_container.manager)
    await both.start()
    try:
        c = both.components
        assert c is not None
        assert isinstance(c.replicas, ReplicaSet)
        replica = c.replicas.replicas[0]
        # The standby replays the load first.
        await eventually(
            lambda: replica.in_rotation and replica.lag_s == 0.0, within=60
        )
        unique = iter(range(10**9))
        paths = {"alone": calls(alone, unique), "replica": calls(both, unique)}
        sizes = {"nearest": args.nearest, "aggregate": args.aggregate}
        readers = {
            "alone": await aresolve(alone_container.versions),
            "replica": await aresolve(both_container.versions),
        }
        asked = {side: r.stats()["reads"] for side, r in readers.items()}
        rates: dict[tuple[str, str], list[float]] = {}
        shares: dict[str, list[float]] = {}
        for name, n in sizes.items():  # warm both (caches, plans, connections)
            for lake in paths.values():
                await rate(n // 10, lake[name], args.tasks)
        for round_no in range(args.rounds):
            order = ["alone", "replica"] if round_no % 2 == 0 else ["replica", "alone"]
            for name, n in sizes.items():
                for side in order:
                    before = served(both)
                    measured = await rate(n, paths[side][name], args.tasks)
                    rates.setdefault((name, side), []).append(measured)
                    if side == "replica":
                        shares.setdefault(name, []).append((served(both) - before) / n)
        report(args, rates, shares)
        calls_made = args.rounds * sum(sizes.values())
        for side, reader in readers.items():
            per_call = (reader.stats()["reads"] - asked[side]) / calls_made
            print(f"{side}: {per_call:.2f} version reads on the primary per read")
        print("replica Lake's reads went:", c.replicas.stats()["routed"])
    finally:
        await both.stop()
        await alone.stop()


def report(
    args: argparse.Namespace,
    rates: dict[tuple[str, str], list[float]],
    shares: dict[str, list[float]],
) -> None:
    print(
        f"\nread replicas, {args.rounds} rounds, {args.tasks} tasks:"
        " median (min-max) over the rounds"
    )
    header = f"{'read':<10} {'alone/s':>9} {'replica/s':>10}  {'ratio':<16}"
    print(f"{header} replica share")
    for name in ("nearest", "aggregate"):
        base, with_replica = rates[(name, "alone")], rates[(name, "replica")]
        ratios = [b / a for a, b in zip(base, with_replica, strict=True)]
        print(
            f"{name:<10} {statistics.median(base):>9.0f}"
            f" {statistics.median(with_replica):>10.0f}  {spread(ratios):<16}"
            f" {statistics.median(shares[name]):.0%}"
        )


def main() -> None:
    """
    Parse the sizes, start the servers, measure, print.
    """
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--nearest", type=int, default=3000, help="calls per round")
    parser.add_argument("--aggregate", type=int, default=300, help="calls per round")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with (
        tempfile.TemporaryDirectory(prefix="lake-bench-replicas-") as tmp,
        servers(Path(tmp)) as (ends, redis),
    ):
        asyncio.run(run(args, ends, redis))


if __name__ == "__main__":
    main()
