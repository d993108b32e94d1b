"""
Store benchmarks: each Lake path measured beside the raw asyncpg equivalent.

Run ``uv run python -m bench`` (``--help`` for sizes). It starts PostgreSQL and Redis
from the embedded wheels (or uses LAKE_BENCH_POSTGRES_DSN / LAKE_BENCH_REDIS_URL),
loads data into a fresh database, and prints and writes (bench/results/latest.json):

- time-series ingest: the store's COPY + merge vs raw ``copy_records_to_table`` of the
  same rows into an identical partitioned table (rows/s, ratio);
- vector search: the store (cache misses: every query vector is new) vs the same
  pgvector query through a bare pool connection (queries/s, ratio), and recall@10
  of the store's answers against exact search;
- spatial nearest-k through the store (queries/s).

Ratios are measured side by side in one run; absolute rates drift between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pgvector import Vector

from lake.config import load_settings
from lake.container import aresolve, create_container
from lake.logs import configure_logging
from lake.manager import ServiceManager
from lake.models import Collection, Feature, Point, VectorItem
from lake.operations import (
    CreateCollection,
    FeaturesNearest,
    SearchVectors,
    UpsertFeatures,
    UpsertVectors,
    WritePoints,
)
from lake.resources.embedded import Endpoint, embedded_servers
from lake.stores.database import _setup_sql

RESULTS = Path(__file__).parent / "results"


async def rate(
    n: int, call: Callable[[int], Awaitable[object]], concurrency: int
) -> float:
    """
    Run ``call(i)`` for i in range(n) on ``concurrency`` workers; return calls/s.
    """
    next_i = iter(range(n))

    async def worker() -> None:
        for i in next_i:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


def spread(values: list[float], digits: int = 2) -> str:
    """
    ``median (min-max)`` of per-round figures.
    """
    return (
        f"{statistics.median(values):.{digits}f}"
        f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


@contextlib.contextmanager
def bench_servers() -> Iterator[tuple[Endpoint, Endpoint]]:
    """
    PostgreSQL and Redis for a benchmark: embedded ones in a temporary directory,
    unless LAKE_BENCH_POSTGRES_DSN / LAKE_BENCH_REDIS_URL name servers to use.
    """
    pg_dsn = os.environ.get("LAKE_BENCH_POSTGRES_DSN", "")
    redis_url = os.environ.get("LAKE_BENCH_REDIS_URL", "")
    with (
        tempfile.TemporaryDirectory(prefix="lake-bench-") as tmp,
        embedded_servers(Path(tmp), postgres=not pg_dsn, redis=not redis_url) as ends,
    ):
        yield (
            ends.get("postgres") or Endpoint(pg_dsn, ""),
            ends.get("redis") or Endpoint(redis_url, ""),
        )


def _ratios(lake: list[float], base: list[float]) -> dict[str, float]:
    """
    Per-round ratios (machine drift cancels within a round): median, min, max.
    """
    r = [a / b for a, b in zip(lake, base, strict=True)]
    return {
        "median": round(statistics.median(r), 3),
        "min": round(min(r), 3),
        "max": round(max(r), 3),
    }


def clustered(rng: random.Random, n: int, dim: int, centers: int) -> list[list[float]]:
    """
    ``n`` vectors around ``centers`` random centres: shaped like real embeddings.
    """
    middles = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(centers)]
    out = []
    for _ in range(n):
        c = middles[rng.randrange(centers)]
        out.append([x + rng.gauss(0, 0.35) for x in c])
    return out


async def bench_ingest(manager: ServiceManager, raw: Any, rows: int) -> dict[str, Any]:
    batch = 10_000
    now = datetime.now(UTC)
    series = 20
    per = rows // series
    step = timedelta(hours=20) / per

    def points(s: int, round_no: int) -> list[Point]:
        base = now - timedelta(hours=21) + timedelta(microseconds=round_no)
        return [Point(base + i * step, float(i)) for i in range(per)]

    await raw.execute(
        "CREATE TABLE bench_ts (series_id bigint, ts timestamptz,"
        " value double precision, PRIMARY KEY (series_id, ts)) PARTITION BY RANGE (ts)"
    )
    # One day partition for every day the rounds write into (the store creates its
    # own on demand; copying its list before its first write missed a day).
    first_day = (now - timedelta(hours=22)).date()
    for d in range(3):
        day = first_day + timedelta(days=d)
        await raw.execute(
            f"CREATE TABLE bench_ts_{day:%Y%m%d} PARTITION OF bench_ts FOR VALUES"
            f" FROM ('{day.isoformat()}T00:00:00+00:00')"
            f" TO ('{(day + timedelta(days=1)).isoformat()}T00:00:00+00:00')"
        )
    store_rates, raw_rates = [], []
    for round_no in range(5):
        data = {s: points(s, round_no) for s in range(series)}

        started = time.perf_counter()
        for s, pts in data.items():
            for i in range(0, len(pts), batch):
                await manager.coordinate(
                    WritePoints("bench", "ingest", pts[i : i + batch], {"s": str(s)})
                )
        store_rates.append(rows / (time.perf_counter() - started))

        records = [(s, p.ts, p.value) for s, pts in data.items() for p in pts]
        started = time.perf_counter()
        for i in range(0, len(records), batch):
            await raw.copy_records_to_table(
                "bench_ts",
                records=records[i : i + batch],
                columns=["series_id", "ts", "value"],
            )
        raw_rates.append(rows / (time.perf_counter() - started))
    store, raw_rate = statistics.median(store_rates), statistics.median(raw_rates)
    return {
        "rows": rows,
        "batch": batch,
        "store_rows_per_s": round(store),
        "raw_copy_rows_per_s": round(raw_rate),
        "ratio": round(store / raw_rate, 3),
    }


async def bench_vectors(
    manager: ServiceManager,
    store: Any,
    pool: Any,
    n: int,
    dim: int,
    queries: int,
    ef_search: int,
    concurrency: int,
) -> dict[str, Any]:
    rng = random.Random(42)
    await manager.coordinate(CreateCollection("bench", Collection("emb", dim)))
    vectors = clustered(rng, n + queries, dim, centers=200)
    data, probes = vectors[:n], vectors[n:]
    started = time.perf_counter()
    for i in range(0, n, 5000):
        items = [VectorItem(f"v{j}", data[j]) for j in range(i, min(i + 5000, n))]
        await manager.coordinate(UpsertVectors("bench", "emb", items))
    load_s = time.perf_counter() - started
    # What autovacuum would do soon after a bulk load, done now so that it does not
    # compete with the measurements; and a checkpoint for the same reason.
    await pool.execute("VACUUM ANALYZE vector_items")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await pool.execute("CHECKPOINT")
    cid = await pool.fetchval("SELECT id FROM vector_collections WHERE name = 'emb'")
    expr = f"(embedding::vector({dim})) <=> $1"
    raw_sql = (
        f"SELECT id, {expr} AS distance, metadata FROM vector_items"  # noqa: S608
        f" WHERE collection_id = {cid} ORDER BY {expr} LIMIT 10"
    )

    misses = iter(range(10**9))

    async def store_query(i: int) -> list[str]:
        # A slightly different vector each call: every manager search misses the cache.
        probe = list(probes[i % len(probes)])
        probe[0] += next(misses) * 1e-6
        found = await manager.coordinate(
            SearchVectors("bench", "emb", probe, k=10, ef_search=ef_search)
        )
        return [m.id for m in found]

    async def store_only(i: int) -> list[str]:
        found = await store.search(
            "bench", "emb", probes[i % len(probes)], 10, ef_search=ef_search
        )
        return [m.id for m in found]

    async def raw_query(i: int) -> list[str]:
        # At its best: one round trip, ef_search set once per connection.
        rows = await pool.fetch(raw_sql, Vector(probes[i % len(probes)]))
        return [r["id"] for r in rows]

    setup = _setup_sql("bench", {"hnsw.ef_search": str(ef_search)}, "")

    async def raw_tx_query(i: int) -> list[str]:
        # The same query inside the tenant transaction Lake uses: what isolation
        # costs by itself (BEGIN + role + tenant + setting, query, COMMIT).
        async with pool.acquire() as conn:
            await conn.execute(setup)
            rows = await conn.fetch(raw_sql, Vector(probes[i % len(probes)]))
            await conn.execute("COMMIT")
        return [r["id"] for r in rows]

    plan = await pool.fetch("EXPLAIN " + raw_sql, Vector(probes[0]))
    for path in (store_query, store_only, raw_query, raw_tx_query):  # warm up
        await rate(50, path, 1)
    out: dict[str, Any] = {
        "vectors": n,
        "dim": dim,
        "ef_search": ef_search,
        "load_vectors_per_s": round(n / load_s),
        "raw_plan": " / ".join(r[0].strip() for r in plan[:2]),
    }
    for label, workers in (("sequential", 1), ("concurrent", concurrency)):
        qps: dict[str, list[float]] = {
            "store": [],
            "manager": [],
            "raw": [],
            "raw_tx": [],
        }
        for _ in range(5):  # interleaved rounds, median of each
            qps["store"].append(await rate(queries, store_only, workers))
            qps["manager"].append(await rate(queries, store_query, workers))
            qps["raw"].append(await rate(queries, raw_query, workers))
            qps["raw_tx"].append(await rate(queries, raw_tx_query, workers))
        med = {k: statistics.median(v) for k, v in qps.items()}
        out[label] = {
            "workers": workers,
            "store_qps": round(med["store"], 1),
            "manager_qps_cache_miss": round(med["manager"], 1),
            "raw_qps": round(med["raw"], 1),
            "raw_tx_qps": round(med["raw_tx"], 1),
            "ratio": _ratios(qps["store"], qps["raw"]),
            "manager_ratio": _ratios(qps["manager"], qps["raw"]),
            "manager_ratio_tx": _ratios(qps["manager"], qps["raw_tx"]),
        }
    hits = 0
    sample = min(100, len(probes))
    async with pool.acquire() as conn:
        await conn.execute("SET enable_indexscan = off")
        for i in range(sample):
            exact = await conn.fetch(raw_sql, Vector(probes[i]))
            got = await store_query(i)
            hits += len({r["id"] for r in exact} & set(got))
        await conn.execute("RESET enable_indexscan")
    out["recall_at_10"] = round(hits / (sample * 10), 4)
    return out


async def bench_spatial(
    manager: ServiceManager, n: int, queries: int, concurrency: int
) -> dict[str, Any]:
    rng = random.Random(7)
    for i in range(0, n, 5000):
        feats = [
            Feature(f"f{j}", rng.uniform(-10, 30), rng.uniform(35, 60))
            for j in range(i, min(i + 5000, n))
        ]
        await manager.coordinate(UpsertFeatures("bench", feats))

    async def nearest(i: int) -> None:
        r = random.Random(i)
        await manager.coordinate(
            FeaturesNearest("bench", r.uniform(-10, 30), r.uniform(35, 60), k=10)
        )

    await rate(50, nearest, 1)
    qps = statistics.median(
        [await rate(queries, nearest, concurrency) for _ in range(3)]
    )
    return {"features": n, "k": 10, "workers": concurrency, "store_qps": round(qps, 1)}


async def run(
    args: argparse.Namespace, pg: Endpoint, redis: Endpoint
) -> dict[str, Any]:
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    db = f"lake_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = pg.url.rsplit("/", 1)[0] + f"/{db}"
    settings = load_settings("testing")
    settings["postgres"].update(
        dsn=dsn,
        password=pg.password,
        max_size=10,
        command_timeout=0,
        statement_timeout_ms=120_000,
    )
    settings["redis"].update(url=redis.url, password=redis.password)
    settings["startup"]["attempt_timeout"] = 60.0
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    store = await aresolve(container.vectors)
    pool = await asyncpg.create_pool(
        dsn,
        password=pg.password or None,
        min_size=args.concurrency,
        max_size=args.concurrency,
        init=_init_vector,
        reset=_no_reset,
        server_settings={"hnsw.ef_search": str(args.ef_search)},
    )
    raw = await asyncpg.connect(dsn, password=pg.password or None)
    try:
        results: dict[str, Any] = {}
        print("time-series ingest ...", flush=True)
        results["timeseries_ingest"] = await bench_ingest(manager, raw, args.points)
        print("vector load and search ...", flush=True)
        results["vector_search"] = await bench_vectors(
            manager,
            store,
            pool,
            args.vectors,
            args.dim,
            args.queries,
            args.ef_search,
            args.concurrency,
        )
        print("spatial nearest-k ...", flush=True)
        results["spatial_nearest"] = await bench_spatial(
            manager, args.features, args.queries, args.concurrency
        )
        return results
    finally:
        await raw.close()
        await pool.close()
        await manager.stop()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


async def _no_reset(conn: Any) -> None:
    """
    The raw baseline at its best: no ``RESET ALL`` round trip on release.
    """


async def _init_vector(conn: Any) -> None:
    from pgvector.asyncpg import register_vector

    await register_vector(conn)


def main() -> None:
    """
    Parse sizes, start or name the servers, run, print and write the results.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with bench_servers() as (pg, redis):
        results = asyncio.run(run(args, pg, redis))
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {RESULTS / 'latest.json'}")
