"""
Lake as 1, 2 and 3 instances on one PostgreSQL and one Redis: how far more
instances carry a cheap read and a write on this machine, and where the CPU goes.

Run ``uv run python -m bench.scale`` (``--help`` for sizes; h2load from Debian's
``nghttp2-client``). It starts PostgreSQL and Redis from the embedded wheels (or
uses LAKE_BENCH_POSTGRES_DSN / LAKE_BENCH_REDIS_URL), three ``lake serve``
processes (testing profile, one worker each), loads features, then in every round
measures each configuration, 1, 2 and 3 instances (the order turning round by
round), with the calls spread over its first 1, 2 or 3 instances:

- ``read``: cached ``Spatial.Nearest`` sent by h2load (a C client, so that the
  client takes little of the two cores), one h2load per instance with an equal
  share of the connections, ``--in-flight`` calls outstanding in all; every call
  checked against Lake's own counts (none failed);
- ``write``: ``TimeSeries.Write`` of ``--batch`` new points, from ``lake.client``
  (round robin over an ``ipv4:`` list, the documented service config), one client
  per tenant over ``--tenants`` tenants, ``--in-flight`` calls outstanding.

For each it prints calls/s, then per configuration the median and spread over the
rounds, the per-round ratios 2/1 and 3/1, and the CPU split in cores (CPU seconds
per wall second, from ``/proc``): every Lake instance, PostgreSQL (postmaster and
backends), Redis, PgBouncer (``--pgbouncer``), the client (this process and its
h2loads), and what the rest of the machine used meanwhile (``other``: on a shared
machine, the noise). Instances outside a configuration idle, and show it.

``--pgbouncer`` puts a PgBouncer (transaction pooling, ``postgres.pgbouncer``)
between the instances and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio as aioredis

from bench.grpc_path import (
    grpc_frame,
    h2load_run,
    lake_env,
    load,
    nearest_figures,
    process,
    tenant_token,
    wait_serving,
    where,
)
from bench.run import bench_servers, spread
from lake.client import LakeClient, Point
from lake.resources.embedded import Endpoint, free_port
from lake.v1 import lake_pb2_grpc

SIZES = (1, 2, 3)
STREAMS = 4  # h2load streams per connection
_TICK = os.sysconf("SC_CLK_TCK")


# --- CPU from /proc ---------------------------------------------------------------


def _stat(pid: int | str) -> tuple[int, float, float] | None:
    # (ppid, own CPU s, CPU s of children it reaped) of one process.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    own = (int(fields[11]) + int(fields[12])) / _TICK
    return int(fields[1]), own, (int(fields[13]) + int(fields[14])) / _TICK


def tree_cpu(root: int) -> float:
    """
    CPU seconds of ``root``, of the children it reaped and of its live children:
    a PostgreSQL's postmaster and every backend, gone ones included.
    """
    top = _stat(root)
    if top is None:
        return 0.0
    total = top[1] + top[2]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(entry.name)
            if found is not None and found[0] == root:
                total += found[1]
    return total


def machine_busy() -> float:
    """
    CPU seconds the whole machine spent busy (not idle, not waiting on I/O).
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


def client_cpu() -> float:
    """
    CPU seconds of this process, its threads and its reaped children (h2loads).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Processes:
    """
    The processes whose CPU the report splits, by label.
    """

    lakes: list[int]
    postgres: int
    redis: int
    pgbouncer: int = 0

    def sample(self) -> dict[str, float]:
        """
        CPU seconds so far, by label (plus ``machine``, the whole machine's).
        """
        found = {f"lake{i + 1}": tree_cpu(pid) for i, pid in enumerate(self.lakes)}
        found |= {"postgres": tree_cpu(self.postgres), "redis": tree_cpu(self.redis)}
        if self.pgbouncer:
            found["pgbouncer"] = tree_cpu(self.pgbouncer)
        found["client"] = client_cpu()
        found["machine"] = machine_busy()
        return found


@contextlib.contextmanager
def measured(procs: Processes, into: list[dict[str, float]]) -> Iterator[None]:
    """
    Cores each process used (CPU s per wall s) over the block, appended to ``into``;
    ``other`` is what the rest of the machine used meanwhile.
    """
    before, started = procs.sample(), time.perf_counter()
    yield
    after, wall = procs.sample(), time.perf_counter() - started
    cores = {k: (after[k] - before[k]) / wall for k in before}
    machine = cores.pop("machine")
    cores["other"] = max(0.0, machine - sum(cores.values()))
    into.append(cores)


async def find_pids(pg: Endpoint, redis: Endpoint) -> tuple[int, int]:
    """
    The postmaster's pid (a backend's parent) and Redis's.
    """
    conn = await asyncpg.connect(pg.url, password=pg.password or None)
    try:
        # Read while the backend lives: its parent is the postmaster.
        found = _stat(int(await conn.fetchval("SELECT pg_backend_pid()")))
    finally:
        await conn.close()
    client = aioredis.from_url(redis.url, password=redis.password or None)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return (found[0] if found else 0), int(info["process_id"])


def child_named(name: str) -> int:
    """
    The pid of this process's child called ``name`` (PgBouncer), else 0.
    """
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _stat(entry.name)) and found[0] == me:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry.name}/comm").read_text().strip() == name:
                    return int(entry.name)
    return 0


# --- the two loads -----------------------------------------------------------------


async def read_phase(
    args: argparse.Namespace, targets: Sequence[str], body: Path
) -> float:
    """
    Cached Spatial.Nearest from one h2load per target, the connections shared out;
    calls/s in all, every call checked against the instances' counts.
    """
    connections = max(1, args.in_flight // STREAMS // len(targets))
    in_flight = connections * STREAMS * len(targets)
    how = [f"-D{args.seconds:g}", f"--warm-up-time={args.warm_up:g}"]
    before = [await nearest_figures(t) for t in targets]
    results = await asyncio.gather(
        *(
            asyncio.to_thread(h2load_run, t, body, how, connections, STREAMS)
            for t in targets
        )
    )
    after = [await nearest_figures(t) for t in targets]
    served = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    failed = Counter[str]()
    for (_, now), (_, then) in zip(after, before, strict=True):
        failed.update({k: v - then.get(k, 0) for k, v in now.items()})
    # h2load ends its duration with calls in flight: those are cancelled.
    cancelled = failed.pop("cancelled", 0)
    succeeded = sum(done for _, done in results)
    if +failed or served < succeeded or cancelled > in_flight:
        msg = (
            f"reads: {served} served for {succeeded} sent,"
            f" failed {dict(failed)}, {cancelled} cancelled"
        )
        raise RuntimeError(msg)
    return sum(rate for rate, _ in results)


@dataclass
class Writers:
    """
    ``lake.client`` clients, one per tenant, each round robin over ``targets``;
    every writer a series of its own, every point a new timestamp.
    """

    targets: Sequence[str]
    tenants: Sequence[str]
    batch: int
    clients: list[LakeClient] = field(default_factory=list)
    sent: dict[int, int] = field(default_factory=dict)
    base: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(1))

    def __post_init__(self) -> None:
        target = list(self.targets)
        self.clients = [
            LakeClient(target, token=tenant_token(t), timeout=30) for t in self.tenants
        ]

    async def one(self, writer: int) -> None:
        """
        One write of ``batch`` new points by ``writer``.
        """
        start = self.sent.get(writer, 0)
        self.sent[writer] = start + self.batch
        points = [
            Point(self.base + timedelta(microseconds=start + j), float(j))
            for j in range(self.batch)
        ]
        client = self.clients[writer % len(self.clients)]
        written = await client.write_points("load", points, {"w": str(writer)})
        if written.written != self.batch:
            msg = f"writer {writer}: {written.written} of {self.batch} written"
            raise RuntimeError(msg)

    async def run(self, in_flight: int, seconds: float) -> float:
        """
        ``in_flight`` writers back to back for ``seconds``: calls/s.
        """
        stop = time.perf_counter() + seconds
        calls = itertools.count()

        async def writer(w: int) -> None:
            while time.perf_counter() < stop:
                await self.one(w)
                next(calls)

        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(in_flight)))
        return next(calls) / (time.perf_counter() - started)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


# --- rounds and the report ---------------------------------------------------------


@dataclass
class Figures:
    """
    Per configuration and load: calls/s of each round, and the CPU split of each.
    """

    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)

    def slot(self, load: str, n: int) -> tuple[list[float], list[dict[str, float]]]:
        return (
            self.rates.setdefault((load, n), []),
            self.cpu.setdefault((load, n), []),
        )


def _cores(split: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in split.items())


async def one_round(
    args: argparse.Namespace,
    round_no: int,
    addresses: Sequence[str],
    writers: dict[int, Writers],
    procs: Processes,
    body: Path,
    figures: Figures,
) -> None:
    """
    Every configuration once, the order turned by the round number.
    """
    order = SIZES[round_no % 3 :] + SIZES[: round_no % 3]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nround {round_no + 1}, load average {load}", flush=True)
    for n in order:
        rates, cpu = figures.slot("read", n)
        with measured(procs, cpu):
            rates.append(await read_phase(args, addresses[:n], body))
        print(f"  read  x{n}  {rates[-1]:7.0f} calls/s  {_cores(cpu[-1])}", flush=True)
        rates, cpu = figures.slot("write", n)
        with measured(procs, cpu):
            rates.append(await writers[n].run(args.in_flight, args.seconds))
        print(f"  write x{n}  {rates[-1]:7.0f} calls/s  {_cores(cpu[-1])}", flush=True)


def _per_call(figures: Figures, kind: str, n: int) -> str:
    # Microseconds of CPU per call, Lake's instances summed, median of the rounds.
    rounds = zip(figures.cpu[(kind, n)], figures.rates[(kind, n)], strict=True)
    found: dict[str, list[float]] = {}
    for split, rate in rounds:
        groups = {"lake": sum(v for k, v in split.items() if k.startswith("lake"))}
        groups |= {k: v for k, v in split.items() if not k.startswith("lake")}
        for k, v in groups.items():
            found.setdefault(k, []).append(v / rate * 1e6)
    found.pop("other", None)
    return "  ".join(f"{k} {statistics.median(v):.0f} us" for k, v in found.items())


def report(args: argparse.Namespace, figures: Figures) -> None:
    """
    Median (min-max) per configuration, per-round ratios to one instance, and the
    median CPU split.
    """
    print(f"\n{args.rounds} rounds, {args.in_flight} calls in flight", end="")
    print(f", {args.seconds:g} s each; writes of {args.batch} points")
    for kind in ("read", "write"):
        one = figures.rates[(kind, 1)]
        print(f"\n{kind}")
        for n in SIZES:
            rates = figures.rates[(kind, n)]
            ratio = ""
            if n > 1:
                per_round = [a / b for a, b in zip(rates, one, strict=True)]
                ratio = f"   {n}/1 {spread(per_round)}"
            print(f"  x{n}  {spread(rates, 0)} calls/s{ratio}")
        for n in SIZES:
            splits = figures.cpu[(kind, n)]
            median = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
            print(f"  x{n}  cores: {_cores(median)}  (sum {sum(median.values()):.2f})")
        for n in SIZES:
            print(f"  x{n}  CPU per call: {_per_call(figures, kind, n)}")


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    tenants = [f"w{i:02d}" for i in range(args.tenants)]
    ports = [free_port() for _ in SIZES]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    postgres_pid, redis_pid = await find_pids(pg, redis)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        db = pg
        if args.pgbouncer:
            from tests.pgbouncer import run_pgbouncer  # only with --pgbouncer

            db = stack.enter_context(
                run_pgbouncer(pg, Path(tmp) / "pgbouncer", pool_size=args.pool)
            )
        lakes = []
        for port in ports:
            env = lake_env(db, redis, port, tenants=tenants)
            env["LAKE_POSTGRES__MAX_SIZE"] = str(args.pool)
            env["LAKE_POSTGRES__PGBOUNCER"] = "true" if args.pgbouncer else "false"
            lakes.append(stack.enter_context(process(["-m", "lake", "serve"], env)))
        for address in addresses:
            await wait_serving(address, "lake.ready")
        procs = Processes([p.pid for p in lakes], postgres_pid, redis_pid)
        procs.pgbouncer = child_named("pgbouncer") if args.pgbouncer else 0
        async with grpc.aio.insecure_channel(addresses[0]) as channel:
            await load(lake_pb2_grpc.SpatialStub(channel), args.features)
        body = Path(tmp) / "nearest.bin"
        body.write_bytes(grpc_frame(where(3)))
        writers = {n: Writers(addresses[:n], tenants, args.batch) for n in SIZES}
        figures = Figures()
        try:
            for n in SIZES:  # warm up: series created, caches filled, connections
                await writers[n].run(args.in_flight, 1.0)
                await read_phase(args, addresses[:n], body)
            for round_no in range(args.rounds):
                await one_round(
                    args, round_no, addresses, writers, procs, body, figures
                )
        finally:
            for w in writers.values():
                await w.aclose()
    report(args, figures)


def main() -> None:
    """
    Parse sizes, start the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warm-up", type=float, default=1.0)
    parser.add_argument("--in-flight", type=int, default=48)
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument(
        "--pool", type=int, default=10, help="postgres.max_size of each instance"
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="Instances reach PostgreSQL through PgBouncer (apt install pgbouncer).",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with bench_servers() as (pg, redis):
        asyncio.run(run(args, pg, redis))


if __name__ == "__main__":
    main()
