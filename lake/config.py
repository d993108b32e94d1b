"""
Settings: the only module that imports dynaconf.

``load_settings`` reads ``config/settings.toml`` (and the git-ignored
``config/.secrets.toml`` beside it), picks the profile from ``LAKE_ENV``, applies
``LAKE_*`` environment overrides, validates, and returns plain values. Components never
see the Dynaconf object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator

from lake.errors import ConfigError

__all__ = ["PROFILES", "load_settings", "mask_text", "masked", "settings_files"]

PROFILES = ("development", "testing", "production")
_SECRET_KEY = re.compile(
    r"password|secret|token|api_key|credential|cursor_key", re.IGNORECASE
)
_DSN_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@"
)
_UNSAFE_ENV_VALUE = re.compile(r"^\s*@(jinja|format)\b", re.IGNORECASE)
# Keys dynaconf adds from the environment that are not Lake settings.
_DYNACONF_KEYS = {"env", "settings_files", "settings_file"}


def settings_files(explicit: str | None = None) -> list[Path]:
    """
    Return the settings files to read, in order.

    ``explicit`` (``--config``) wins over ``LAKE_SETTINGS_FILES``, which wins over
    ``config/settings.toml`` in the working directory and then beside the package.
    """
    chosen = explicit or os.environ.get("LAKE_SETTINGS_FILES")
    if chosen:
        files = [Path(p) for p in re.split(r"[,;]", chosen) if p.strip()]
    else:
        here = Path.cwd() / "config" / "settings.toml"
        beside = Path(__file__).resolve().parent.parent / "config" / "settings.toml"
        files = [here if here.exists() else beside]
    for file in files:
        if not file.is_file():
            msg = f"settings file not found: {file}"
            raise ConfigError(msg)
    secrets = files[0].parent / ".secrets.toml"
    if secrets.is_file():
        files.append(secrets)
    return files


def _refuse_template_values(environ: Mapping[str, str]) -> None:
    """
    Refuse ``@jinja``/``@format`` values from the environment.

    dynaconf renders them (CVE-2026-33154): whoever sets an environment variable
    would run code in Lake.
    """
    for name, value in environ.items():
        if name.startswith("LAKE_") and _UNSAFE_ENV_VALUE.match(value):
            msg = f"{name} uses a dynaconf template (@jinja/@format); refused"
            raise ConfigError(msg)


def _validators(profile: str) -> list[Validator]:
    positive = {"gt": 0}
    checks = [
        Validator("postgres.dsn", "redis.url", "grpc.address", is_type_of=str),
        Validator("postgres.min_size", is_type_of=int, gte=0),
        Validator("postgres.max_size", is_type_of=int, gte=1),
        Validator(
            "postgres.connect_timeout",
            "postgres.acquire_timeout",
            "redis.socket_timeout",
            "redis.socket_connect_timeout",
            "grpc.grace",
            "startup.timeout",
            "startup.attempt_timeout",
            "health.check_timeout",
            "health.interval",
            "mesh.call_timeout",
            "grpc.max_deadline_s",
            "grpc.max_connection_age_s",
            "cache.timeout",
            "cache.cooldown_s",
            "timeseries.maintenance_interval",
            "auth.refresh_s",
            "auth.failure_window_s",
            is_type_of=(int, float),
            **positive,
        ),
        Validator(
            "timeseries.retention_days",
            "timeseries.future_days",
            "cache.ttl_s",
            "vectors.ef_search",
            "limits.max_range_days",
            is_type_of=int,
            gte=1,
        ),
        Validator("startup.attempts", "operations.attempts", is_type_of=int, gte=1),
        Validator("auth.max_failures", is_type_of=int, gte=1),
        Validator("postgres.command_timeout", is_type_of=(int, float), gte=0),
        Validator("operations.timeout", is_type_of=(int, float), gt=0),
        Validator("redis.retries", is_type_of=int, gte=0),
        Validator("grpc.address", must_exist=True, ne=""),
        Validator("logging.format", is_in=["console", "json"]),
        Validator("logging.level", is_in=["DEBUG", "INFO", "WARNING", "ERROR"]),
        Validator("mesh.peers", "auth.tokens", is_type_of=dict),
        Validator("auth.enabled", "grpc.reflection", is_type_of=bool),
    ]
    if profile == "production":
        # Production never embeds and never guesses where its data lives. (A
        # Validator's env= loads that env instead of scoping to it, hence the if.)
        checks += [
            Validator("postgres.dsn", must_exist=True, ne=""),
            Validator("redis.url", must_exist=True, ne=""),
            Validator("embedded", eq=False),
            Validator("auth.enabled", eq=True),
            Validator("auth.tokens", must_exist=True, len_min=1),
        ]
    return checks


def _env_var(key: str) -> str:
    return "LAKE_" + key.upper().replace(".", "__")


def load_settings(
    env: str | None = None, *, files: str | None = None
) -> dict[str, Any]:
    """
    Load, validate and return the settings of one profile as plain values.

    The profile is ``env``, else ``LAKE_ENV``, else ``development``; ``LAKE_*``
    variables override the files.

    Raises:
        ConfigError: one line naming the key and the profile.
    """
    _refuse_template_values(os.environ)
    profile = (env or os.environ.get("LAKE_ENV") or "development").lower()
    if profile not in PROFILES:
        choices = ", ".join(PROFILES)
        msg = f"unknown profile {profile!r} (LAKE_ENV): choose one of {choices}"
        raise ConfigError(msg)
    dyn = Dynaconf(
        settings_files=[str(f) for f in settings_files(files)],
        environments=True,
        envvar_prefix="LAKE",
        env=profile,
        merge_enabled=True,
    )
    dyn.validators.register(*_validators(profile))
    try:
        dyn.validators.validate_all()
    except ValidationError as exc:
        validator = exc.details[0][0] if exc.details else None
        key = validator.names[0] if validator is not None else "?"
        msg = (
            f"invalid or missing setting {key} in profile {profile!r} "
            f"(set it in the settings file or as {_env_var(key)})"
        )
        raise ConfigError(msg) from None
    values = {k.lower(): v for k, v in dyn.as_dict().items()}
    for key in _DYNACONF_KEYS:
        values.pop(key, None)
    values["profile"] = profile
    _check_pool_sizes(values, profile)
    _check_tokens(values["auth"]["tokens"], profile)
    return values


_HASH = re.compile(r"[0-9a-f]{64}")


def _token_entry_ok(digest: object, value: object) -> bool:
    from lake.validation import check_tenant

    entry = value if isinstance(value, Mapping) else {"tenant": value}
    if not _HASH.fullmatch(str(digest).lower()):
        return False
    if entry.get("scope", "write") not in ("read", "write", "admin"):
        return False
    try:
        check_tenant(entry.get("tenant"))
    except ValueError:
        return False
    return True


def _check_tokens(tokens: Mapping[str, Any], profile: str) -> None:
    """
    Each ``auth.tokens`` entry: a SHA-256 hex -> a tenant, or -> {tenant, scope}.
    """
    if not all(_token_entry_ok(d, v) for d, v in tokens.items()):
        msg = (
            f"invalid setting auth.tokens in profile {profile!r}: each entry is "
            '"<sha256 hex>" = "tenant" or { tenant = "t", scope = "read|write|admin" }'
        )
        raise ConfigError(msg)


def _check_pool_sizes(values: Mapping[str, Any], profile: str) -> None:
    pg = values["postgres"]
    if pg["min_size"] > pg["max_size"]:
        msg = (
            f"invalid setting postgres.min_size in profile {profile!r}: "
            f"larger than postgres.max_size ({pg['min_size']} > {pg['max_size']})"
        )
        raise ConfigError(msg)


def mask_text(text: str) -> str:
    """
    Hide the password of every ``scheme://user:password@`` credential in ``text``.
    """
    return _DSN_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def masked(value: Any, key: str = "") -> Any:
    """
    Return a copy of ``value`` with secrets masked, for printing or logging.
    """
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, key) for v in value]
    if _SECRET_KEY.search(key) and value not in ("", None):
        return "***"
    if isinstance(value, str):
        return mask_text(value)
    return value
