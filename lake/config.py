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
from urllib.parse import parse_qsl, unquote, urlsplit

from dynaconf import Dynaconf, ValidationError, Validator

from lake.errors import ConfigError
from lake.quotas.policy import QUOTA_NAMES
from lake.schema import (
    REDIS_DEFAULT_PORTS,
    REDIS_MODES,
    Schema,
    check_addresses,
    check_environ,
    check_files,
    check_tree,
    env_var,
    not_settings,
    split_nodes,
)
from lake.secretfiles import load_secret_files, secret_file_keys

__all__ = [
    "PROFILES",
    "load_settings",
    "mask_text",
    "masked",
    "secret_values",
    "settings_files",
]

PROFILES = ("development", "testing", "production")
_SECRET_KEY = re.compile(
    r"password|secret|token|api_key|credential|cursor_key", re.IGNORECASE
)
# scheme://user:password@ (user may be empty). The password runs to the last @ of
# the word, so one with an unencoded @ or / is hidden whole (masking too much is
# the safe side).
_DSN_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):\S+@", re.IGNORECASE
)
# key=value with a secret-looking key: a URL query (?password=), a key=value DSN
# (host=db password=...), quoted or not.
_SECRET_PAIR = re.compile(
    r"(?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token|api_key|apikey)"
    r"\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&#'\"]+)",
    re.IGNORECASE,
)
_UNSAFE_ENV_VALUE = re.compile(r"^\s*@(jinja|format)\b", re.IGNORECASE)
# Keys dynaconf adds from the environment that are not Lake settings.
_DYNACONF_KEYS = {"env", "settings_files", "settings_file"}
_BESIDE = Path(__file__).resolve().parent.parent / "config" / "settings.toml"


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
        files = [here if here.exists() else _BESIDE]
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


# PEM file settings; a certificate and its key come in pairs.
_TLS_PAIRS = (
    ("grpc.tls.cert_file", "grpc.tls.key_file"),
    ("mesh.tls.cert_file", "mesh.tls.key_file"),
    ("client.tls.cert_file", "client.tls.key_file"),
    ("redis.ssl_cert_file", "redis.ssl_key_file"),
)
_TLS_FILES = (
    *(key for pair in _TLS_PAIRS for key in pair),
    "grpc.tls.client_ca_file",
    "mesh.tls.ca_file",
    "client.tls.ca_file",
    "redis.ssl_ca_file",
)


def _each(*names: str, **rules: Any) -> list[Validator]:
    # One Validator per key: a failing Validator is reported by its first name, so
    # sharing one between keys would blame the wrong key.
    return [Validator(name, **rules) for name in names]


def _validators(profile: str) -> list[Validator]:
    positive = {"gt": 0}
    checks = [
        *_each("postgres.dsn", "redis.url", "grpc.address", is_type_of=str),
        *_each("redis.mode", is_in=list(REDIS_MODES)),
        *_each("redis.sentinel_master", "redis.sentinel_password", is_type_of=str),
        *_each("postgres.min_size", is_type_of=int, gte=0),
        *_each("postgres.max_size", is_type_of=int, gte=1),
        *_each("postgres.replica_dsns", is_type_of=list),
        *_each("postgres.max_replica_lag", is_type_of=(int, float), gt=0),
        *_each("postgres.replica_max_size", is_type_of=int, gte=1),
        *_each("postgres.replica_check_interval", is_type_of=(int, float), gt=0),
        *_each(
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
            "usage.flush_interval",
            "usage.flush_timeout",
            is_type_of=(int, float),
            **positive,
        ),
        *_each(
            "timeseries.retention_days",
            "timeseries.future_days",
            "cache.ttl_s",
            "vectors.ef_search",
            "limits.max_range_days",
            is_type_of=int,
            gte=1,
        ),
        *_each("startup.attempts", "operations.attempts", is_type_of=int, gte=1),
        *_each(
            "limits.max_tags",
            "limits.max_tags_bytes",
            "limits.max_json_keys",
            "limits.max_json_depth",
            "limits.max_stream_points",
            "grpc.max_open_streams",
            "grpc.max_streams_per_peer",
            "grpc.max_streams_per_connection",
            is_type_of=int,
            gte=1,
        ),
        # Past ~2.7 kB PostgreSQL refuses a series' btree row; keep well below.
        *_each("limits.max_tags_bytes", lte=2048),
        *_each("redis.max_connections", is_type_of=int, gte=1),
        *_each("grpc.workers", is_type_of=int, gte=0),
        *_each(
            "redis.pool_wait",
            "grpc.stream_idle_timeout_s",
            "health.loop_lag_threshold_ms",
            is_type_of=(int, float),
            gt=0,
        ),
        *_each("postgres.command_timeout", is_type_of=(int, float), gte=0),
        *_each("grpc.drain_s", is_type_of=(int, float), gte=0),
        # The cache's lease: 0 turns it off; polls at least every millisecond.
        *_each("cache.lease_ms", is_type_of=(int, float), gte=0, lte=10_000),
        *_each("cache.poll_ms", is_type_of=(int, float), gte=1, lte=1_000),
        *_each("operations.timeout", is_type_of=(int, float), gt=0),
        *_each("redis.retries", is_type_of=int, gte=0),
        *_each("grpc.address", must_exist=True, ne=""),
        *_each("logging.format", is_in=["console", "json"]),
        *_each("logging.level", is_in=["DEBUG", "INFO", "WARNING", "ERROR"]),
        *_each("mesh.peers", "auth.tokens", is_type_of=dict),
        *_each(
            "auth.enabled", "grpc.reflection", "postgres.pgbouncer", is_type_of=bool
        ),
        *_each(*_TLS_FILES, is_type_of=str),
        *_each("mesh.tls.server_name", "client.tls.server_name", is_type_of=str),
        *_each("grpc.tls.behind_proxy", is_type_of=bool),
        *_each("auth.max_failures", is_type_of=int, gte=1),
        *_each(
            "protection.breaker.window_s",
            "protection.breaker.min_calls",
            "protection.breaker.half_open_calls",
            "protection.retry_budget.ttl_s",
            "protection.timeouts.samples",
            "protection.fair_share.max_queue_per_tenant",
            is_type_of=int,
            gte=1,
        ),
        *_each(
            "protection.breaker.failure_rate",
            "protection.breaker.slow_call_rate",
            "protection.fair_share.share",
            is_type_of=(int, float),
            gt=0,
            lte=1,
        ),
        *_each(
            "protection.breaker.slow_call_s",
            "protection.breaker.open_wait_s",
            "protection.breaker.max_half_open_s",
            "protection.timeouts.multiplier",
            "protection.timeouts.floor_s",
            is_type_of=(int, float),
            **positive,
        ),
        *_each(
            "protection.retry_budget.ratio",
            "protection.retry_budget.min_per_s",
            is_type_of=(int, float),
            gte=0,
        ),
        *_each(
            "protection.timeouts.enabled",
            "protection.fair_share.by_time",
            is_type_of=bool,
        ),
        *_each("usage.max_rows", is_type_of=int, gte=1),
        *_each("usage.enabled", is_type_of=bool),
        *_each(
            *(f"quotas.default.{n}" for n in QUOTA_NAMES[:4]),
            is_type_of=(int, float),
            gte=0,
        ),
        *_each(
            *(f"quotas.default.{n}" for n in QUOTA_NAMES[4:]), is_type_of=int, gte=0
        ),
        *_each("tracing.enabled", is_type_of=bool),
        *_each("tracing.exporter", is_in=["otlp", "console"]),
        *_each("tracing.endpoint", "tracing.service_name", is_type_of=str),
        *_each("tracing.sample_ratio", is_type_of=(int, float), gte=0, lte=1),
        *_each("quotas.strategy", is_in=["moving-window", "sliding-window-counter"]),
        *_each("quotas.window_s", is_type_of=int, gte=1),
        *_each("quotas.lease", is_type_of=(int, float), gte=0, lte=0.5),
        *_each("quotas.cooldown_s", is_type_of=(int, float), gt=0),
        # lake quota set counts on every instance within 5 s.
        *_each("quotas.refresh_s", is_type_of=(int, float), gt=0, lte=5),
    ]
    if profile == "production":
        # Production never embeds and never guesses where its data lives. (A
        # Validator's env= loads that env instead of scoping to it, hence the if.)
        checks += [
            *_each("postgres.dsn", must_exist=True, ne=""),
            *_each("redis.url", must_exist=True, ne=""),
            *_each("embedded", eq=False),
            *_each("auth.enabled", eq=True),
            # From auth.tokens_file instead, they are checked once read.
            Validator(
                "auth.tokens",
                must_exist=True,
                len_min=1,
                when=Validator("auth.tokens_file", eq=""),
            ),
        ]
    return checks


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
}
_RULE_WORDS = {
    "gt": "> {}",
    "gte": ">= {}",
    "lte": "<= {}",
    "ne": "other than {}",
    "eq": "{}",
}
# What a value given as text in an environment variable needs to be a table.
_TABLE_HINTS = {
    "auth.tokens": 'a table, e.g. { "<sha256 hex>" = "tenant" }',
    "mesh.peers": 'a table, e.g. { cortex = "127.0.0.1:50061" }',
}


def _rule(key: str, validator: Validator) -> str:
    """
    What ``validator`` requires, in words (never the value, which may be secret).
    """
    words = []
    for op, arg in validator.operations.items():
        if op == "is_type_of":
            if key in _TABLE_HINTS:
                words.append(_TABLE_HINTS[key])
                continue
            kinds = arg if isinstance(arg, tuple) else (arg,)
            if float in kinds:
                kinds = (float,)  # "an integer or a number" says less than "a number"
            words.append(" or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds))
        elif op == "is_in":
            words.append("one of " + ", ".join(map(str, arg)))
        elif op == "len_min":
            words.append(f"at least {arg} entr{'y' if arg == 1 else 'ies'}")
        elif op == "ne" and arg == "":
            words.append("set (not empty)")
        elif op in _RULE_WORDS:
            joint = "and " if op == "lte" and words else ""  # "> 0 and <= 5"
            words.append(joint + _RULE_WORDS[op].format(str(arg).lower()))
    return ("must be " + " ".join(words)) if words else "is required"


def _failure(exc: ValidationError, profile: str) -> ConfigError:
    validator = exc.details[0][0] if exc.details else None
    key = validator.names[0] if validator is not None else "?"
    rule = f": {_rule(key, validator)}" if validator is not None else ""
    msg = (
        f"invalid or missing setting {key} in profile {profile!r} "
        f"(set it in the settings file or as {env_var(key)}){rule}"
    )
    return ConfigError(msg)


def _schema_file(files: list[Path]) -> Path:
    """
    The file whose [default] table defines the known keys: the bundled one when it
    is there, else the first file read.
    """
    for candidate in (Path.cwd() / "config" / "settings.toml", _BESIDE):
        if candidate.is_file():
            return candidate
    return files[0]


def load_settings(
    env: str | None = None, *, files: str | None = None
) -> dict[str, Any]:
    """
    Load, validate and return the settings of one profile as plain values.

    The profile is ``env``, else ``LAKE_ENV``, else ``development``; ``LAKE_*``
    variables override the files. A key no settings file's ``[default]`` table
    defines is refused, wherever it comes from.

    Raises:
        ConfigError: one line naming the key and the profile.
    """
    _refuse_template_values(os.environ)
    profile = (env or os.environ.get("LAKE_ENV") or "development").lower()
    if profile not in PROFILES:
        choices = ", ".join(PROFILES)
        msg = f"unknown profile {profile!r} (LAKE_ENV): choose one of {choices}"
        raise ConfigError(msg)
    paths = settings_files(files)
    schema = Schema.from_file(_schema_file(paths))
    check_files(paths, schema)
    check_environ(os.environ, schema)
    dyn = Dynaconf(
        settings_files=[str(f) for f in paths],
        environments=True,
        envvar_prefix="LAKE",
        env=profile,
        merge_enabled=True,
    )
    dyn.validators.register(*_validators(profile))
    try:
        dyn.validators.validate_all()
    except ValidationError as exc:
        raise _failure(exc, profile) from None
    values = {k.lower(): v for k, v in dyn.as_dict().items()}
    for key in _DYNACONF_KEYS | not_settings(os.environ):
        values.pop(key, None)
    check_tree(values, schema, os.environ)
    pairs = secret_file_keys(schema, lambda key: bool(_SECRET_KEY.search(key)))
    load_secret_files(values, pairs, profile)
    _lower_map_keys(values, schema.maps)
    values["profile"] = profile
    _check_pool_sizes(values, profile)
    _check_replicas(values, profile)
    _check_tls(values, profile)
    check_addresses(values, profile)
    _check_redis(values["redis"], profile)
    _check_tokens(values["auth"]["tokens"], profile)
    return values


def _lower_map_keys(values: dict[str, Any], maps: frozenset[str]) -> None:
    """
    Lowercase the entry names of free-form maps: dynaconf upper-cases a name set
    as LAKE_MESH__PEERS__CORTEX, and peer names and token hashes are lowercase.
    """
    for path in maps:
        *parents, leaf = path.split(".")
        node: Any = values
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), Mapping):
            node[leaf] = {str(k).lower(): v for k, v in node[leaf].items()}


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


def _check_replicas(values: Mapping[str, Any], profile: str) -> None:
    pg = values["postgres"]
    if not all(isinstance(dsn, str) and dsn for dsn in pg["replica_dsns"]):
        msg = (
            f"invalid setting postgres.replica_dsns in profile {profile!r}: "
            "must be a list of postgresql:// URLs"
        )
        raise ConfigError(msg)
    if pg["replica_check_interval"] >= pg["max_replica_lag"]:
        msg = (
            f"invalid setting postgres.replica_check_interval in profile {profile!r}"
            ": must be shorter than postgres.max_replica_lag (a replica is checked"
            " several times within the lag it may have)"
        )
        raise ConfigError(msg)


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def _check_tls(values: Mapping[str, Any], profile: str) -> None:
    """
    Certificates come with their keys, client settings with the CA they pin, and
    production serves gRPC over TLS unless a TLS-terminating proxy is declared.
    (Whether the files can be read is checked where they are used, at start-up,
    naming the file.)
    """
    needs = [*_TLS_PAIRS, *((key, cert) for cert, key in _TLS_PAIRS)]
    needs += [("grpc.tls.client_ca_file", "grpc.tls.cert_file")] + [
        (f"{side}.tls.{key}", f"{side}.tls.ca_file")
        for side in ("mesh", "client")
        for key in ("cert_file", "server_name")
    ]
    for key, required in needs:
        if _lookup(values, key) and not _lookup(values, required):
            msg = f"invalid setting {key} in profile {profile!r}: needs {required}"
            raise ConfigError(msg)
    redis = values["redis"]
    tls_files = (redis["ssl_ca_file"], redis["ssl_cert_file"])
    if any(tls_files) and redis["url"] and not redis["url"].startswith("rediss://"):
        msg = (
            f"invalid setting redis.url in profile {profile!r}: the redis.ssl_* "
            "files need a rediss:// url"
        )
        raise ConfigError(msg)
    _check_grpc_plaintext(values["grpc"]["tls"], profile)


def _redis_problem(redis: Mapping[str, Any]) -> tuple[str, str] | None:
    """
    What is wrong with the Redis settings of their mode, as (key, problem); the
    url's shape and ports were checked already (``check_addresses``).
    """
    mode, url = redis["mode"], redis["url"]
    if mode != "sentinel":
        for key in ("sentinel_master", "sentinel_password"):
            if redis[key]:
                return key, f"is read in sentinel mode only (redis.mode is {mode})"
    if mode == "standalone":
        if "," in urlsplit(url).netloc.rpartition("@")[2]:
            return "url", "lists several hosts: set redis.mode to sentinel or cluster"
        return None
    if not url:
        listed = "sentinels" if mode == "sentinel" else "seed nodes"
        return "url", f"must list the {listed}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return "url", f"a unix socket cannot be used in {mode} mode"
    if parts.query:
        return "url", f"takes no ?options in {mode} mode (use the redis.* settings)"
    db = parts.path.strip("/")
    if not db.isdigit() and db:
        return "url", "the path must be a database number (/0)"
    if mode == "cluster" and db not in ("", "0"):
        return "url", "a Redis Cluster has database 0 only"
    try:
        split_nodes(url, REDIS_DEFAULT_PORTS[mode])
    except ValueError as exc:
        return "url", str(exc)
    if mode == "sentinel" and not redis["sentinel_master"]:
        return "sentinel_master", "must name the master the sentinels monitor"
    return None


def _check_redis(redis: Mapping[str, Any], profile: str) -> None:
    """
    The keys of ``redis.mode``: one host in standalone, the sentinels and the
    master's name in sentinel mode, seed nodes in cluster mode.
    """
    problem = _redis_problem(redis)
    if problem is not None:
        key, what = f"redis.{problem[0]}", problem[1]
        msg = f"invalid setting {key} in profile {profile!r} ({env_var(key)}): {what}"
        raise ConfigError(msg)


def _check_grpc_plaintext(tls: Mapping[str, Any], profile: str) -> None:
    if profile == "production" and not tls["cert_file"] and not tls["behind_proxy"]:
        msg = (
            f"missing setting grpc.tls.cert_file in profile {profile!r}: production "
            "serves gRPC over TLS (set LAKE_GRPC__TLS__CERT_FILE and "
            "LAKE_GRPC__TLS__KEY_FILE, or LAKE_GRPC__TLS__BEHIND_PROXY=true when a "
            "TLS-terminating proxy is in front)"
        )
        raise ConfigError(msg)


def mask_text(text: str) -> str:
    """
    Hide every password in ``text``: ``scheme://user:password@``, a query's
    ``?password=``, a key=value DSN's ``password=...`` (quoted or not), and any
    other ``...secret=``/``...token=`` pair.
    """
    text = _DSN_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _SECRET_PAIR.sub(r"\g<key>***", text)


def secret_values(values: Mapping[str, Any]) -> list[str]:
    """
    Every secret the settings hold, as it may appear in a log line: the passwords,
    the cursor key, and the passwords inside the DSN, the replicas' DSNs and the
    Redis URL (raw and URL-decoded).
    """
    found = [
        values["postgres"]["password"],
        values["redis"]["password"],
        values["redis"].get("sentinel_password", ""),
        values["timeseries"]["cursor_key"],
    ]
    urls = [values["postgres"]["dsn"], values["redis"]["url"]]
    replicas = values["postgres"].get("replica_dsns") or []
    urls += [u for u in replicas if isinstance(u, str)]
    for url in urls:
        parts = urlsplit(url)
        pairs = [("password", parts.password or ""), *parse_qsl(parts.query)]
        for key, value in pairs:
            if _SECRET_KEY.search(key) and value:
                found += [value, unquote(value)]
        found += [m.group("value").strip("'\"") for m in _SECRET_PAIR.finditer(url)]
    return sorted({str(v) for v in found if v})


def masked(value: Any, key: str = "") -> Any:
    """
    Return a copy of ``value`` with secrets masked, for printing or logging.
    """
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, key) for v in value]
    # A *_file setting is where a secret is, not the secret: shown.
    secret = _SECRET_KEY.search(key) and not key.endswith("_file")
    if secret and value not in ("", None):
        return "***"
    if isinstance(value, str):
        return mask_text(value)
    return value
