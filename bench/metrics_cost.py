"""
What the metrics cost on the hot path, in ns per call, and what a scrape costs.

Run ``uv run python -m bench.metrics_cost``. No servers: it times the recorders
alone (best of nine timeit repeats) and prints each cost beside the share of the
~590 µs of Lake CPU a cached gRPC read costs (issue 8), and prometheus-client's
own labelled Counter + Histogram for comparison (what the recorders replace).

- ``operation``: ``OperationMetrics.record`` (count by code + duration histogram),
  once per operation in ``ServiceManager.coordinate``;
- ``operation, tenant labels``: the same with a ``metrics.tenant_labels`` list;
- ``pool cycle``: ``acquiring`` + ``acquired`` + ``released``, once per pooled
  connection in ``Database.connection``;
- ``connection() overhead``: ``Database.connection()`` on a pool that answers at
  once, minus a copy of it without the metrics (best of eleven interleaved runs);
- ``scrape``: rendering /metrics with 16 operations recorded (every 15 s).
"""

from __future__ import annotations

import asyncio
import time
import timeit
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter
from prometheus_client import Histogram as PromHistogram

from lake.metrics import MetricsRegistry
from lake.opmetrics import OperationMetrics
from lake.poolmetrics import PoolMetrics
from lake.stores.database import Database

CACHED_READ_US = 590.0  # Lake CPU per cached gRPC read (issue 8)
N = 200_000


def _ns(stmt: Callable[[], object], number: int = N) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=9))
    return best / number * 1e9


class _InstantPool:
    async def acquire(self) -> object:
        return self

    async def release(self, conn: object) -> None:
        return None

    def get_size(self) -> int:
        return 1

    def get_idle_size(self) -> int:
        return 1

    def get_min_size(self) -> int:
        return 1

    def get_max_size(self) -> int:
        return 1


async def _connection_overhead_ns(n: int = 50_000) -> float:
    pool = _InstantPool()
    db = Database(pool)

    async def with_metrics() -> None:
        for _ in range(n):
            async with db.connection():
                pass

    @asynccontextmanager
    async def connection() -> AsyncIterator[object]:
        # Database.connection() as it was before the metrics.
        # (its except clauses cost nothing when nothing is raised: left out)
        async with asyncio.timeout(2.0):
            conn = await pool.acquire()
        try:
            yield conn
        finally:
            await pool.release(conn)

    async def bare() -> None:
        for _ in range(n):
            async with connection():
                pass

    best: dict[str, float] = {}
    for _ in range(11):
        for name, run in (("metrics", with_metrics), ("bare", bare)):
            started = time.perf_counter()
            await run()
            took = (time.perf_counter() - started) / n * 1e9
            best[name] = min(best.get(name, took), took)
    return best["metrics"] - best["bare"]


def main() -> None:
    """
    Print the table.
    """
    ops = OperationMetrics()
    ops.record("FeaturesNearest", "t", 0.001, None)
    labelled = OperationMetrics(tenant_labels=["big", "t"])
    labelled.record("FeaturesNearest", "t", 0.001, None)
    pool = PoolMetrics()

    def pool_cycle() -> None:
        pool.released(pool.acquired(pool.acquiring()))

    registry = CollectorRegistry()
    counter = Counter("c", "c", ["operation", "code"], registry=registry)
    hist = PromHistogram("h", "h", ["operation"], registry=registry)

    def prometheus_client_way() -> None:
        counter.labels("FeaturesNearest", "OK").inc()
        hist.labels("FeaturesNearest").observe(0.001)

    rows = [
        ("operation", _ns(lambda: ops.record("FeaturesNearest", "t", 0.001, None))),
        (
            "operation, tenant labels",
            _ns(lambda: labelled.record("FeaturesNearest", "t", 0.001, None)),
        ),
        ("pool cycle", _ns(pool_cycle)),
        ("connection() overhead", asyncio.run(_connection_overhead_ns())),
        ("prometheus-client Counter+Histogram", _ns(prometheus_client_way)),
    ]
    print(f"{'recorder':<38} {'ns/call':>8} {'of a 590 µs read':>17}")
    for name, ns in rows:
        share = ns / (CACHED_READ_US * 1000.0)
        print(f"{name:<38} {ns:>8.0f} {share:>16.3%}")
    # The pool cycle is inside the connection() overhead.
    per_call = rows[0][1] + max(rows[3][1], 0.0)
    print(
        f"{'per call (operation + connection())':<38} {per_call:>8.0f}"
        f" {per_call / (CACHED_READ_US * 1000.0):>16.3%}"
    )
    # Throughput on ÷ off for a CPU-bound read: what the added CPU leaves.
    ratio = CACHED_READ_US * 1000.0 / (CACHED_READ_US * 1000.0 + per_call)
    print(f"{'implied throughput, metrics on ÷ off':<38} {ratio:>8.4f}")

    scraped = OperationMetrics()
    for i in range(16):
        for _ in range(100):
            scraped.record(f"Operation{i}", "t", 0.001 * i, None)
    source = MetricsRegistry([scraped, PoolMetrics()])
    rounds = 200

    async def scrapes() -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            await source.exposition()
        return (time.perf_counter() - started) / rounds * 1000.0

    ms = asyncio.run(scrapes())
    print(f"{'scrape (16 operations)':<38} {ms * 1e6:>8.0f}  ({ms:.2f} ms each)")


if __name__ == "__main__":
    main()
