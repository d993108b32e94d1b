"""
docker-compose.yml configures Lake only through settings that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lake.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
_INTERPOLATION = re.compile(r"\$\{[^}]*\}")


# What an operator would put in the ${...} variables compose leaves to them.
_EXAMPLES = {"LAKE_AUTH__TOKENS": '{ "' + "ab" * 32 + '" = "acme" }'}


def lake_environment() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["lake"]["environment"]
    return {
        k: _EXAMPLES.get(k) or _INTERPOLATION.sub("x", str(v)) for k, v in env.items()
    }


def test_every_lake_variable_names_a_real_setting():
    """Each LAKE_A__B variable maps to an existing key a.b of the settings."""
    settings = load_settings("development")
    for name in lake_environment():
        if name == "LAKE_ENV":
            continue
        node = settings
        for part in name.removeprefix("LAKE_").lower().split("__"):
            assert isinstance(node, dict), name
            assert part in node, f"{name} names no setting"
            node = node[part]


def test_compose_environment_passes_production_validation(monkeypatch):
    """The production profile accepts exactly what compose sets."""
    for name, value in lake_environment().items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings["profile"] == "production"
    assert settings["postgres"]["dsn"] == "postgresql://lake@postgres:5432/lake"
    assert settings["embedded"] is False
    assert settings["logging"]["format"] == "json"


def test_lake_service_has_a_health_check_using_lake_health():
    """Compose probes Lake through its own health command."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    check = compose["services"]["lake"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "lake", "health"]
