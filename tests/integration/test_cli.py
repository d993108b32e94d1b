"""
The ``lake`` command as a user runs it: real processes, real ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lake.resources.embedded import free_port

LAKE = [sys.executable, "-m", "lake"]


def env_for(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAKE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_ready(address: str, env: dict[str, str], proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        result = run("health", "--address", address, env=env)
        if result.returncode == 0:
            return result.stdout
        time.sleep(0.3)
    pytest.fail("lake serve did not become ready in 90 s")


def processes_using(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue  # already exited, waiting to be reaped by init
        if str(path).encode() in cmdline:
            found.append(cmdline.decode(errors="replace"))
    return found


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_serve_embedded_health_and_clean_stop(tmp_path):
    """Quickstart path: embedded servers, every component UP, Ctrl-C leaves nothing."""
    data = tmp_path / "data"
    address = f"127.0.0.1:{free_port()}"
    env = env_for(
        LAKE_ENV="development",
        LAKE_DATA_DIR=str(data),
        LAKE_GRPC__ADDRESS=address,
        # A port of its own (development's default, 9464, may be taken here).
        LAKE_METRICS__ADDRESS=f"127.0.0.1:{free_port()}",
        LAKE_HEALTH__INTERVAL="0.2",
    )
    proc = subprocess.Popen(
        [*LAKE, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = wait_ready(address, env, proc)
        for name in ("postgres", "redis", "timeseries", "spatial", "vectors"):
            assert f"  {name}" in out
        assert "DOWN" not in out
        assert f"lake at {address}: UP (ready, running)" in out

        # A client Lake did not generate: the standard health stub and reflection.
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "lake.ready", "lake.postgres", "lake.redis"):
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=5,
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert {
                "lake.v1.LakeHealth",
                "lake.v1.Vectors",
                "lake.v1.TimeSeries",
                "lake.v1.Spatial",
                "grpc.health.v1.Health",
            } <= names
    finally:
        started = time.monotonic()
        code, err = stop(proc)
        took = time.monotonic() - started
    assert code == 0, err
    assert took < 5.0 + 10.0  # grace plus the embedded servers' own shutdown
    assert processes_using(data) == []
    assert "lake_stopped" in err

    # A second run reuses the data: no initdb, no migration applied again.
    proc = subprocess.Popen(
        [*LAKE, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(address, env, proc)
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "embedded_postgres_initialised" not in err
    assert "migration_applied" not in err
    assert processes_using(data) == []


def test_production_without_dsn_fails_before_the_network(tmp_path):
    """One line naming the missing setting, non-zero exit, no server started."""
    result = run(
        "serve", env=env_for(LAKE_ENV="production", LAKE_DATA_DIR=str(tmp_path))
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "postgres.dsn" in lines[0]
    assert "production" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing embedded, nothing written


def test_health_without_a_server_exits_2():
    """No server at the address: a clear message and exit code 2."""
    result = run(
        "health",
        "--address",
        f"127.0.0.1:{free_port()}",
        "--timeout",
        "1",
        env=env_for(),
    )
    assert result.returncode == 2
    assert "no answer" in result.stderr


def test_config_masks_secrets():
    """lake config prints the effective settings with passwords masked."""
    env = env_for(
        LAKE_POSTGRES__DSN="postgresql://lake:dsn-secret-1@db:5432/lake",
        LAKE_REDIS__PASSWORD="redis-secret-2",
    )
    result = run("--env", "testing", "config", env=env)
    assert result.returncode == 0, result.stderr
    assert "dsn-secret-1" not in result.stdout
    assert "redis-secret-2" not in result.stdout
    assert "postgresql://lake:***@db:5432/lake" in result.stdout
    assert '"profile": "testing"' in result.stdout


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["health"], ["migrate"], ["config"]]
)
def test_every_command_has_help(command):
    """Each command explains itself."""
    result = run(*command, "--help", env=env_for())
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert len(result.stdout.splitlines()) > 3


async def test_migrate_applies_the_schema(servers, database):
    """lake migrate on an empty database records every migration."""
    import asyncpg

    from lake.stores.migrate import load_migrations

    pg, rd = servers["postgres"], servers["redis"]
    env = env_for(
        LAKE_POSTGRES__DSN=database,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
    )
    result = run("--env", "testing", "migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stdout
    assert pg.password not in result.stdout + result.stderr
    conn = await asyncpg.connect(database, password=pg.password or None)
    versions = await conn.fetch("SELECT version FROM lake_migrations ORDER BY version")
    await conn.close()
    assert [r["version"] for r in versions] == [m.version for m in load_migrations()]


def test_second_process_cannot_take_over_running_embedded_servers(tmp_path):
    """While lake serve holds .lake, lake migrate refuses with a clear line and the
    first server keeps running and ready."""
    data = tmp_path / "data"
    address = f"127.0.0.1:{free_port()}"
    env = env_for(
        LAKE_ENV="development",
        LAKE_DATA_DIR=str(data),
        LAKE_GRPC__ADDRESS=address,
        LAKE_METRICS__ADDRESS=f"127.0.0.1:{free_port()}",
    )
    proc = subprocess.Popen(
        [*LAKE, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(address, env, proc)
        second = run("migrate", env=env)
        assert second.returncode != 0
        assert "in use by another lake process" in second.stderr
        assert run("health", "--address", address, env=env).returncode == 0
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert processes_using(data) == []


def test_serve_on_a_taken_address_fails_with_one_line(servers, tmp_path):
    """A port already in use gives a clear error, exit 1, and nothing left running."""
    import socket

    pg, rd = servers["postgres"], servers["redis"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = env_for(
            LAKE_ENV="testing",
            LAKE_GRPC__ADDRESS=address,
            LAKE_POSTGRES__DSN=pg.url,
            LAKE_POSTGRES__PASSWORD=pg.password,
            LAKE_REDIS__URL=rd.url,
            LAKE_REDIS__PASSWORD=rd.password,
        )
        result = run("serve", env=env)
    assert result.returncode == 1
    assert f"Error: grpc.address {address} is already in use by another process" in (
        result.stderr
    )
