"""
Settings: profiles, environment overrides, validation and masking.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lake.config import load_settings, masked
from lake.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (
        "LAKE_ENV",
        "LAKE_SETTINGS_FILES",
        "LAKE_POSTGRES__DSN",
        "LAKE_REDIS__URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_development_is_the_default_profile_and_embeds():
    """With no LAKE_ENV, development is chosen and embedded servers are on."""
    values = load_settings()
    assert values["profile"] == "development"
    assert values["embedded"] is True
    assert values["logging"]["format"] == "console"


def test_profiles_layer_over_default():
    """A profile changes only what it names; the rest comes from [default]."""
    testing = load_settings("testing")
    assert testing["grpc"]["address"] == "127.0.0.1:0"
    assert testing["grpc"]["grace"] == 5.0
    assert testing["startup"]["attempts"] == 2


def test_env_var_overrides_nested_key(monkeypatch):
    """LAKE_POSTGRES__DSN sets postgres.dsn and keeps its siblings."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", "postgresql://db.example:5432/lake")
    monkeypatch.setenv("LAKE_POSTGRES__MAX_SIZE", "20")
    values = load_settings("testing")
    assert values["postgres"]["dsn"] == "postgresql://db.example:5432/lake"
    assert values["postgres"]["max_size"] == 20
    assert values["postgres"]["min_size"] == 1


def test_lake_env_chooses_the_profile(monkeypatch):
    """LAKE_ENV picks the profile when none is passed."""
    monkeypatch.setenv("LAKE_ENV", "testing")
    assert load_settings()["profile"] == "testing"


def test_production_without_dsn_fails_with_one_line_naming_key():
    """Production refuses to start without explicit DSNs, naming key and profile."""
    with pytest.raises(ConfigError) as info:
        load_settings("production")
    message = str(info.value)
    assert "\n" not in message
    assert "postgres.dsn" in message
    assert "'production'" in message
    assert "LAKE_POSTGRES__DSN" in message


def test_production_names_redis_when_only_postgres_is_set(monkeypatch):
    """The first missing key is the one named."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", "postgresql://db:5432/lake")
    with pytest.raises(ConfigError, match=r"redis\.url"):
        load_settings("production")


def test_production_refuses_embedded(monkeypatch):
    """Production never embeds, even when asked to."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", "postgresql://db:5432/lake")
    monkeypatch.setenv("LAKE_REDIS__URL", "redis://cache:6379/0")
    monkeypatch.setenv("LAKE_EMBEDDED", "true")
    with pytest.raises(ConfigError, match="embedded"):
        load_settings("production")


def test_bad_value_names_key_and_profile(monkeypatch):
    """A wrongly typed value fails with the key and profile."""
    monkeypatch.setenv("LAKE_LOGGING__FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"logging\.format in profile 'testing'"):
        load_settings("testing")


def test_pool_bounds_are_checked(monkeypatch):
    """min_size above max_size is refused."""
    monkeypatch.setenv("LAKE_POSTGRES__MIN_SIZE", "30")
    with pytest.raises(ConfigError, match=r"postgres\.min_size"):
        load_settings("testing")


def test_unknown_profile_is_refused():
    """Only the three profiles exist."""
    with pytest.raises(ConfigError, match="unknown profile 'staging'"):
        load_settings("staging")


@pytest.mark.parametrize("value", ["@jinja {{ this.__class__ }}", "@format {env}"])
def test_template_values_from_the_environment_are_refused(monkeypatch, value):
    """Templates from the environment would run code: refused (CVE-2026-33154)."""
    monkeypatch.setenv("LAKE_SERVICE_NAME", value)
    with pytest.raises(ConfigError, match="LAKE_SERVICE_NAME"):
        load_settings("testing")


def test_another_settings_file(tmp_path, monkeypatch):
    """LAKE_SETTINGS_FILES points at another file; its secrets file is read too."""
    original = Path("config/settings.toml").read_text()
    (tmp_path / "settings.toml").write_text(
        original.replace('service_name = "lake"', 'service_name = "lake-eu"')
    )
    (tmp_path / ".secrets.toml").write_text(
        '[default.postgres]\npassword = "s3cret-pw"\n'
    )
    monkeypatch.setenv("LAKE_SETTINGS_FILES", str(tmp_path / "settings.toml"))
    values = load_settings("testing")
    assert values["service_name"] == "lake-eu"
    assert values["postgres"]["password"] == "s3cret-pw"


def test_missing_settings_file_is_a_config_error(tmp_path):
    """A settings file that does not exist is named."""
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings("testing", files=str(tmp_path / "nope.toml"))


def test_masked_hides_secrets_and_dsn_credentials():
    """Secret keys and DSN passwords are masked; everything else is kept."""
    shown = masked(
        {
            "postgres": {
                "dsn": "postgresql://lake:hunter2@db:5432/lake",
                "password": "pw",
            },
            "redis": {"url": "redis://:tok3n@cache:6379/0", "password": ""},
            "grpc": {"address": "127.0.0.1:50051"},
        }
    )
    assert shown["postgres"]["dsn"] == "postgresql://lake:***@db:5432/lake"
    assert shown["postgres"]["password"] == "***"
    assert shown["redis"]["url"] == "redis://:***@cache:6379/0"
    assert shown["redis"]["password"] == ""
    assert shown["grpc"]["address"] == "127.0.0.1:50051"
