"""
The shell commands tell the truth: zero values printed, every service reachable,
one exit-code rule (0 ok, 1 refused, 2 no server), integer counters, bad CSV rows
named before anything is sent, a taken port refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from unittest.mock import Mock

import pytest
from google.protobuf import timestamp_pb2

from lake.api.server import LakeServer
from lake.errors import ConfigError
from lake.manager import ServiceManager
from lake.resources.embedded import free_port
from lake.v1 import lake_pb2
from tests.api.conftest import auth

LAKE = [sys.executable, "-m", "lake"]


async def lake(*args: str, **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = await asyncio.create_subprocess_exec(
        *LAKE,
        *args,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_call_prints_zero_values(api):
    """A feature at lat 0, lon 0, found at distance 0, prints all three zeros."""
    await api.spatial.Upsert(
        lake_pb2.UpsertFeaturesRequest(
            features=[lake_pb2.Feature(id="origin", lon=0, lat=0)]
        ),
        metadata=auth(),
    )
    code, out, err = await lake(
        "call",
        "Spatial.Nearest",
        "--address",
        api.server.address,
        "--token",
        "token-a",
        "-d",
        '{"lon": 0, "lat": 0, "k": 1}',
    )
    assert code == 0, err
    match = json.loads(out)["matches"][0]
    assert match["distance_m"] == 0
    assert match["feature"]["lat"] == 0
    assert match["feature"]["lon"] == 0
    assert match["feature"]["id"] == "origin"


async def test_call_reaches_the_health_services(api):
    """lake call reaches LakeHealth and grpc.health.v1.Health, short or full names."""
    checks = {
        "LakeHealth.GetHealth": lambda r: r["ready"] is True,
        "lake.v1.LakeHealth.GetStatus": lambda r: r["status"]["state"] == "running",
        "Health.Check": lambda r: r["status"] == "SERVING",
        "grpc.health.v1.Health.Check": lambda r: r["status"] == "SERVING",
    }
    results = await asyncio.gather(
        *(
            lake(
                "call",
                method,
                "--address",
                api.server.address,
                "--token",
                "token-admin",  # GetStatus needs an admin token
                "-d",
                "{}",
            )
            for method in checks
        )
    )
    for (method, check), (code, out, err) in zip(checks.items(), results, strict=True):
        assert code == 0, (method, err)
        assert check(json.loads(out)), (method, out)


async def test_status_counters_are_integers(api):
    """lake status prints counters as integers, not 3.0."""
    for _ in range(3):
        await api.spatial.Nearest(
            lake_pb2.NearestRequest(lon=0, lat=0), metadata=auth()
        )
    code, out, err = await lake(
        "status", "--address", api.server.address, "--token", "token-admin"
    )
    assert code == 0, err
    calls = json.loads(out)["operations"]["FeaturesNearest"]["calls"]
    assert calls == 3
    assert isinstance(calls, int)
    assert '"calls": 3,' in out or '"calls": 3\n' in out


async def test_a_server_refusal_exits_1_for_every_command(api):
    """Any error status from a reachable server exits 1, with the code named."""
    where = ["--address", api.server.address]
    code, _, err = await lake("call", "Vectors.Search", *where, "-d", "{}")
    assert (code, "UNAUTHENTICATED" in err) == (1, True), err
    code, _, err = await lake(
        "call", "Health.Check", *where, "-d", '{"service": "nope"}'
    )
    assert (code, "NOT_FOUND" in err) == (1, True), err


async def test_no_server_exits_2_for_every_command(tmp_path):
    """Nothing listening: health, status, call and points write all exit 2 and say
    so; input refused before sending exits 1 whether or not a server is there."""
    address = f"127.0.0.1:{free_port()}"
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("2026-11-27T10:00:00Z,1\n")
    commands = [
        ["health"],
        ["status"],
        ["call", "LakeHealth.GetHealth", "-d", "{}"],
        ["call", "Vectors.Search", "-d", "{}"],
        ["points", "write", "temp", str(csv_file)],
        ["call", "Vectors.Search", "-d", "{not json"],
    ]
    results = await asyncio.gather(
        *(lake(*c, "--address", address, "--timeout", "5") for c in commands)
    )
    for command, (code, _, err) in zip(commands[:-1], results, strict=False):
        assert code == 2, (command, err)
        assert f"no answer from {address} (UNAVAILABLE)" in err, command
    code, _, err = results[-1]
    assert code == 1, err
    assert "bad request JSON" in err


async def test_a_silent_listener_is_no_server():
    """A port that accepts TCP but never speaks gRPC: the deadline passes, exit 2."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, _, err = await lake(
            "call", "LakeHealth.GetHealth", "--address", address, "-t", "1", "-d", "{}"
        )
    assert code == 2, err
    assert "no answer" in err
    assert "DEADLINE_EXCEEDED" in err


async def test_bad_csv_row_is_named_and_nothing_is_sent(api, tmp_path):
    """A bad row fails with FILE:LINE:COLUMN, exit 1, and no point is written."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rows = ["timestamp,value"] + [
        f"{(start + timedelta(seconds=i)).isoformat()},{i}" for i in range(5)
    ]
    rows[4] = f"{start.isoformat()},twelve"
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    code, out, err = await lake(
        "points",
        "write",
        "temp",
        str(csv_file),
        "--address",
        api.server.address,
        "--token",
        "token-a",
    )
    assert code == 1
    assert err.strip() == f"{csv_file}:5:2: value 'twelve' is not a finite number"
    assert out == ""
    reply = await api.series.Query(
        lake_pb2.QueryPointsRequest(
            metric="temp",
            start=stamp(start - timedelta(minutes=1)),
            end=stamp(start + timedelta(hours=1)),
        ),
        metadata=auth(),
    )
    assert list(reply.series) == []


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def fake_manager() -> ServiceManager:
    return Mock(spec_set=ServiceManager)


async def test_a_port_held_by_another_process_is_refused():
    """A plain socket holding the port: LakeServer refuses with one clear line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = LakeServer(fake_manager(), address=address, interceptors=())
        with pytest.raises(ConfigError) as info:
            await server.start()
    assert (
        str(info.value)
        == f"grpc.address {address} is already in use by another process"
    )


async def test_a_second_lake_server_on_the_same_port_is_refused():
    """grpc's SO_REUSEPORT is off: a second Lake on a live Lake's port refuses."""
    first = LakeServer(fake_manager(), address="127.0.0.1:0", interceptors=())
    await first.start()
    try:
        second = LakeServer(fake_manager(), address=first.address, interceptors=())
        with pytest.raises(ConfigError, match="already in use by another process"):
            await second.start()
    finally:
        await first.stop(None)


async def test_a_second_lake_serve_on_a_live_port_refuses(api, servers):
    """lake serve on the port a running Lake holds stops with one line, exit 1."""
    pg, rd = servers["postgres"], servers["redis"]
    code, _, err = await lake(
        "serve",
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=api.server.address,
        LAKE_POSTGRES__DSN=pg.url,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
    )
    assert code == 1
    assert err.strip().splitlines() == [
        f"Error: grpc.address {api.server.address} is already in use by another process"
    ]
