"""
Lake over the wire: gRPC Spatial.Nearest against a bare grpc.aio echo, side by side.

Run ``uv run python -m bench.grpc_path`` (``--help`` for sizes). It starts
PostgreSQL and Redis from the embedded wheels (or uses LAKE_BENCH_POSTGRES_DSN /
LAKE_BENCH_REDIS_URL), a Lake server (``python -m lake serve``, testing profile)
and a bare echo server (``bench/echo.py``) as processes of their own, loads
features through the API, then measures in interleaved rounds, with
``--in-flight`` calls outstanding:

- ``echo``: the echo server, a 64-byte request;
- ``floor``: the echo server's ``Spatial.Nearest`` (grpcio's floor for the method:
  the request parsed, metadata read, ten matches built once), so
  ``hit`` ÷ ``floor`` is what Lake adds to grpcio for a cached answer;
- ``hit``: ``Spatial.Nearest`` over a small repeated set (cacheable);
- ``miss``: ``Spatial.Nearest`` at points never asked before (unique requests).

For each it prints calls/s (median and spread over the rounds), the per-round ratio
to the echo, and the server process's CPU time per call (user + system, from
``/proc``), so "Lake's own cost per call" is a measured number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.run import bench_servers, rate, spread
from lake.api.auth import hash_token
from lake.resources.embedded import Endpoint, free_port
from lake.v1 import health_pb2 as health_lake
from lake.v1 import health_pb2_grpc as health_pb2_lake
from lake.v1 import lake_pb2, lake_pb2_grpc

TOKEN = "bench-token"  # noqa: S105 -- a throwaway token for a local benchmark
ADMIN = "bench-admin"  # reads lake status to check the calls
AUTH = (("authorization", f"Bearer {TOKEN}"),)
Call = Callable[[int], Awaitable[object]]


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU seconds a process has used so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """
    A child process, terminated on exit.
    """
    proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and modules
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def tenant_token(tenant: str) -> str:
    """
    The throwaway token ``lake_env(..., tenants=...)`` grants ``tenant``.
    """
    return f"bench-token-{tenant}"


def lake_env(
    pg: Endpoint, redis: Endpoint, port: int, *, tenants: Sequence[str] = ()
) -> dict[str, str]:
    """
    A ``lake serve`` of the testing profile on ``port``, with the bench token
    (tenant ``bench``), the admin token and one token per ``tenants``.
    """
    tokens = [
        f'"{hash_token(TOKEN)}" = "bench"',
        f'"{hash_token(ADMIN)}" = {{ tenant = "ops", scope = "admin" }}',
        *(f'"{hash_token(tenant_token(t))}" = "{t}"' for t in tenants),
    ]
    env = dict(os.environ)
    env.update(
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=f"127.0.0.1:{port}",
        LAKE_POSTGRES__DSN=pg.url,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=redis.url,
        LAKE_REDIS__PASSWORD=redis.password,
        LAKE_AUTH__TOKENS="{ " + ", ".join(tokens) + " }",
        LAKE_LOGGING__LEVEL="WARNING",
    )
    return env


async def wait_serving(target: str, service: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.aio.AioRpcError:
                reply = None
            if reply is not None and reply.status == reply.SERVING:
                return
            await asyncio.sleep(0.1)
    msg = f"{target} not serving {service!r} in {seconds:g}s"
    raise RuntimeError(msg)


async def load(spatial: Any, n: int) -> None:
    rng = random.Random(7)
    for i in range(0, n, 2000):
        features = [
            lake_pb2.Feature(
                id=f"f{j}", lon=rng.uniform(-10, 30), lat=rng.uniform(35, 60)
            )
            for j in range(i, min(i + 2000, n))
        ]
        await spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(features=features), metadata=AUTH
        )


def where(i: int) -> lake_pb2.NearestRequest:
    r = random.Random(i)
    return lake_pb2.NearestRequest(lon=r.uniform(-10, 30), lat=r.uniform(35, 60), k=10)


async def run(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    lake_port, echo_port = free_port(), free_port()
    env = lake_env(pg, redis, lake_port)
    with (
        process(["-m", "lake", "serve"], env) as lake,
        process(["-m", "bench.echo", str(echo_port)], dict(os.environ)) as echo,
    ):
        lake_target, echo_target = f"127.0.0.1:{lake_port}", f"127.0.0.1:{echo_port}"
        await wait_serving(lake_target, "lake.ready")
        async with (
            grpc.aio.insecure_channel(lake_target) as lake_channel,
            grpc.aio.insecure_channel(echo_target) as echo_channel,
        ):
            spatial: Any = lake_pb2_grpc.SpatialStub(lake_channel)
            echo_call: Any = echo_channel.unary_unary("/bench.Echo/Echo", None, None)
            floor_stub: Any = lake_pb2_grpc.SpatialStub(echo_channel)
            payload = b"x" * 64
            await load(spatial, args.features)
            unique = iter(range(10**6, 10**9))

            async def echo_one(i: int) -> object:
                return await echo_call(payload, timeout=10)

            async def floor(i: int) -> object:
                request = where(i % 64)
                return await floor_stub.Nearest(request, metadata=AUTH, timeout=10)

            async def hit(i: int) -> object:
                return await spatial.Nearest(where(i % 64), metadata=AUTH, timeout=10)

            async def miss(i: int) -> object:
                request = where(next(unique))
                return await spatial.Nearest(request, metadata=AUTH, timeout=10)

            paths: dict[str, tuple[Call, int]] = {
                "echo": (echo_one, echo.pid),
                "floor": (floor, echo.pid),
                "hit": (hit, lake.pid),
                "miss": (miss, lake.pid),
            }
            # Warm up and fill the cache for hits, reading for 3 s at least: the
            # version lease trusts nothing for its first 2 s + lease_ms.
            warm_until = time.monotonic() + 3.0
            while time.monotonic() < warm_until:
                for call, _ in paths.values():
                    await rate(300, call, args.in_flight)
            qps: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, (call, pid) in paths.items():
                    before = cpu_seconds(pid)
                    qps[name].append(await rate(args.calls, call, args.in_flight))
                    cpu[name].append((cpu_seconds(pid) - before) / args.calls * 1e6)
    print(f"\ngRPC, {args.in_flight} calls in flight, {args.rounds} rounds")
    report_paths(qps, cpu)


def report_paths(qps: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """
    Each path's calls/s and server CPU per call, and its per-round ratios to the
    echo and to the floor.
    """
    print(
        "  path   calls/s median (min-max)   server CPU us/call   ratio to echo"
        "       ratio to floor"
    )
    for name in qps:
        ratios = [a / b for a, b in zip(qps[name], qps["echo"], strict=True)]
        floors = [a / b for a, b in zip(qps[name], qps["floor"], strict=True)]
        print(
            f"  {name:<6} {spread(qps[name], 0):<26} {spread(cpu[name], 0):<20}"
            f" {spread(ratios):<19} {spread(floors)}"
        )


async def run_h2load(args: argparse.Namespace, pg: Endpoint, redis: Endpoint) -> None:
    """
    The echo, the floor and a cached Spatial.Nearest loaded by h2load (a C client
    that leaves the server its core), interleaved rounds of ``--seconds`` each:
    calls/s and the server's CPU per call (every call checked: h2load counts
    successes, and gRPC's own errors would show as failed calls in lake status).
    """
    lake_port, echo_port = free_port(), free_port()
    with (
        process(["-m", "lake", "serve"], lake_env(pg, redis, lake_port)) as lake,
        process(["-m", "bench.echo", str(echo_port)], dict(os.environ)) as echo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        lake_target, echo_target = f"127.0.0.1:{lake_port}", f"127.0.0.1:{echo_port}"
        await wait_serving(lake_target, "lake.ready")
        async with grpc.aio.insecure_channel(lake_target) as channel:
            await load(lake_pb2_grpc.SpatialStub(channel), args.features)
        nearest = Path(tmp) / "nearest.bin"
        nearest.write_bytes(grpc_frame(where(3)))
        payload = Path(tmp) / "echo.bin"
        payload.write_bytes(frame(b"x" * 64))
        paths = {
            "echo": (echo_target, payload, "/bench.Echo/Echo", echo.pid),
            "floor": (echo_target, nearest, "/lake.v1.Spatial/Nearest", echo.pid),
            "hit": (lake_target, nearest, "/lake.v1.Spatial/Nearest", lake.pid),
        }
        connections = 8
        streams = max(1, args.in_flight // connections)
        qps: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        _, failures = await nearest_counts(lake_target)
        for round_no in range(args.rounds + 1):  # the first warms up (the lease)
            for name, (target, body, path, pid) in paths.items():
                before = cpu_seconds(pid)
                rate, done = await asyncio.to_thread(
                    h2load_run,
                    target,
                    body,
                    [f"-D{args.seconds}"],
                    connections,
                    streams,
                    path=path,
                )
                if round_no:
                    qps[name].append(rate)
                    cpu[name].append((cpu_seconds(pid) - before) / done * 1e6)
        _, failed = await nearest_counts(lake_target)
        if failed != failures:
            msg = f"Lake failed {failed - failures} calls"
            raise RuntimeError(msg)
    head = f"gRPC by h2load, {connections} connections x {streams} streams"
    print(f"\n{head}, {args.rounds} rounds of {args.seconds} s")
    report_paths(qps, cpu)


async def compare_workers(
    args: argparse.Namespace, pg: Endpoint, redis: Endpoint
) -> None:
    """
    The same read mix against one Lake with 1 worker process and one with 2, on one
    database, interleaved rounds: the throughput ratio of using both cores.
    """
    ports = {1: free_port(), 2: free_port()}
    lakes = []
    with contextlib.ExitStack() as stack:
        for n, port in ports.items():
            env = lake_env(pg, redis, port) | {"LAKE_GRPC__WORKERS": str(n)}
            lakes.append(stack.enter_context(process(["-m", "lake", "serve"], env)))
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}", "lake.ready")
        # Several connections per Lake (SO_REUSEPORT spreads connections, not
        # calls): eight channels, each with a connection of its own.
        own = [("grpc.use_local_subchannel_pool", 1)]
        channels = {
            n: [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own)
                for _ in range(8)
            ]
            for n, port in ports.items()
        }
        try:
            stubs: dict[int, list[Any]] = {
                n: [lake_pb2_grpc.SpatialStub(ch) for ch in chs]
                for n, chs in channels.items()
            }
            await load(stubs[1][0], args.features)
            unique = iter(range(10**6, 10**9))

            def mix(spread: list[Any]) -> Call:
                async def call(i: int) -> object:
                    # A read mix: three cacheable reads to one unique one.
                    key = next(unique) if i % 4 == 0 else i % 64
                    stub = spread[i % len(spread)]
                    return await stub.Nearest(where(key), metadata=AUTH, timeout=10)

                return call

            calls = {n: mix(spread) for n, spread in stubs.items()}
            for call in calls.values():
                await rate(300, call, args.in_flight)
            qps: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for n, call in calls.items():
                    qps[n].append(await rate(args.calls, call, args.in_flight))
        finally:
            for chs in channels.values():
                for ch in chs:
                    await ch.close(None)
    ratios = [b / a for a, b in zip(qps[1], qps[2], strict=True)]
    print(f"\nread mix, {args.in_flight} in flight, {args.rounds} rounds")
    print(f"  1 worker   {spread(qps[1], 0)} calls/s")
    print(f"  2 workers  {spread(qps[2], 0)} calls/s")
    print(f"  2 / 1      {spread(ratios)}")


def grpc_frame(message: Any) -> bytes:
    """
    One protobuf message as it goes on the wire (``frame``).
    """
    body: bytes = message.SerializeToString()
    return frame(body)


def frame(body: bytes) -> bytes:
    """
    One gRPC message as it goes on the wire: not compressed, length, bytes.
    """
    return b"\x00" + struct.pack(">I", len(body)) + body


async def nearest_counts(target: str) -> tuple[int, int]:
    """
    FeaturesNearest calls and failures so far, from lake status (all workers).
    """
    calls, failures = await nearest_figures(target)
    return calls, sum(failures.values())


async def nearest_figures(target: str) -> tuple[int, dict[str, int]]:
    """
    FeaturesNearest calls so far and failures by kind (``cancelled``, ...).
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_lake.LakeHealthStub(channel)
        reply = await stub.GetStatus(
            health_lake.GetStatusRequest(),
            metadata=(("authorization", f"Bearer {ADMIN}"),),
            timeout=10,
        )
    ops = json_format.MessageToDict(reply.status).get("operations", {})
    nearest = ops.get("FeaturesNearest", {})
    failures = {k: int(v) for k, v in nearest.get("failures", {}).items()}
    return int(nearest.get("calls", 0)), failures


def h2load(target: str, body: Path, n: int, connections: int, streams: int) -> float:
    """
    Calls/s of ``n`` Spatial.Nearest calls sent by h2load (nghttp2's load generator,
    a C client that costs the machine little beside the server).
    """
    rate, _ = h2load_run(target, body, [f"-n{n}"], connections, streams, expect=n)
    return rate


def h2load_run(
    target: str,
    body: Path,
    how: list[str],
    connections: int,
    streams: int,
    *,
    expect: int | None = None,
    path: str = "/lake.v1.Spatial/Nearest",
) -> tuple[float, int]:
    """
    Spatial.Nearest calls sent by h2load, ``how`` many (``-n1000``, or
    ``-D5 --warm-up-time=1`` for five seconds after one of warm-up): calls/s and
    the calls that succeeded. Every call done must have succeeded (``expect``:
    and that many). gRPC errors come in trailers behind HTTP 200: check Lake's
    own failure counts as well (``nearest_counts``).
    """
    out = subprocess.run(  # noqa: S603 -- constant arguments of our own
        [  # noqa: S607 -- h2load from the PATH (Debian's nghttp2-client)
            "h2load",
            *how,
            f"-c{connections}",
            f"-m{streams}",
            f"-d{body}",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            f"authorization: Bearer {TOKEN}",
            f"http://{target}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out)
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out
    )
    complete = done is not None and done.group(1) == done.group(2)
    if expect is not None and done is not None:
        complete = complete and int(done.group(2)) == expect
    if found is None or done is None or not complete:
        tail = "\n".join(line for line in out.splitlines() if "progress" not in line)
        msg = f"h2load did not finish every call:\n{tail}"
        raise RuntimeError(msg)
    return float(found.group(1)), int(done.group(2))


async def compare_workers_h2load(
    args: argparse.Namespace, pg: Endpoint, redis: Endpoint
) -> None:
    """
    1 worker against 2, cached Spatial.Nearest sent by h2load (a C client: the
    Python client took a core of its own, so two workers could not show what
    they add on two cores). gRPC answers errors in trailers behind HTTP 200, so
    every round is checked against lake status: each call counted, none failed.
    """
    from bench.scale import tree_cpu  # bench.scale imports this module

    ports = {1: free_port(), 2: free_port()}
    pids: dict[int, int] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for n, port in ports.items():
            env = lake_env(pg, redis, port) | {"LAKE_GRPC__WORKERS": str(n)}
            pids[n] = stack.enter_context(process(["-m", "lake", "serve"], env)).pid
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}", "lake.ready")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
            await load(lake_pb2_grpc.SpatialStub(channel), args.features)
        body = Path(tmp) / "nearest.bin"
        body.write_bytes(grpc_frame(where(3)))
        connections = 8
        streams = max(1, args.in_flight // connections)
        qps: dict[int, list[float]] = {1: [], 2: []}
        cores: dict[int, list[float]] = {1: [], 2: []}
        for port in ports.values():  # warm up
            await asyncio.to_thread(
                h2load, f"127.0.0.1:{port}", body, 500, connections, streams
            )
        for _ in range(args.rounds):
            for n, port in ports.items():
                target = f"127.0.0.1:{port}"
                calls, failures = await nearest_counts(target)
                cpu_before, started = tree_cpu(pids[n]), time.monotonic()
                qps[n].append(
                    await asyncio.to_thread(
                        h2load, target, body, args.calls, connections, streams
                    )
                )
                used = tree_cpu(pids[n]) - cpu_before
                cores[n].append(used / (time.monotonic() - started))
                # Workers publish their figures every second: wait for them.
                for _ in range(50):
                    after, failed = await nearest_counts(target)
                    if after - calls >= args.calls:
                        break
                    await asyncio.sleep(0.2)
                if after - calls < args.calls or failed != failures:
                    msg = f"{n} worker(s): {after - calls} served, {failed} failed"
                    raise RuntimeError(msg)
    ratios = [b / a for a, b in zip(qps[1], qps[2], strict=True)]
    # One worker is not one core: grpcio's poller thread runs beside the event
    # loop. Two cores hold at most 2 / (one worker's cores) of one worker's rate.
    bounds = [2 / c for c in cores[1]]
    head = f"cached Spatial.Nearest by h2load, {args.in_flight} in flight"
    print(f"\n{head}, {args.rounds} rounds")
    print(f"  1 worker   {spread(qps[1], 0)} calls/s, {spread(cores[1])} cores")
    print(f"  2 workers  {spread(qps[2], 0)} calls/s, {spread(cores[2])} cores")
    print(f"  2 / 1      {spread(ratios)}")
    print(f"  bound      {spread(bounds)} (2 cores / one worker's cores)")


def main() -> None:
    """
    Parse sizes, start the servers, run and print.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.grpc_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument(
        "--compare-workers",
        action="store_true",
        help="Compare 1 and 2 worker processes on a read mix instead.",
    )
    parser.add_argument(
        "--h2load",
        action="store_true",
        help="Load with h2load instead of a Python client (apt install"
        " nghttp2-client): the echo, the floor and cached reads, or with"
        " --compare-workers 1 worker against 2.",
    )
    parser.add_argument(
        "--seconds", type=int, default=5, help="With --h2load: seconds a round."
    )
    args = parser.parse_args()
    with bench_servers() as (pg, redis):
        job = compare_workers if args.compare_workers else run
        if args.h2load:
            job = compare_workers_h2load if args.compare_workers else run_h2load
        asyncio.run(job(args, pg, redis))


if __name__ == "__main__":
    main()
