"""
Settings that catch mistakes: the exact key named, unknown keys refused with the
nearest known one, addresses checked, every password form masked, secret files
private from the first byte.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import structlog

from lake.config import load_settings, mask_text, masked, secret_values
from lake.errors import ConfigError
from lake.logs import configure_logging, register_secrets
from lake.resources import embedded
from lake.schema import Schema

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "settings.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name)


def refused(monkeypatch, profile: str = "testing", **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(profile)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("LAKE_HEALTH__INTERVAL", "-1", "health.interval"),
        ("LAKE_CACHE__COOLDOWN_S", "0", "cache.cooldown_s"),
        (
            "LAKE_TIMESERIES__MAINTENANCE_INTERVAL",
            "0",
            "timeseries.maintenance_interval",
        ),
        ("LAKE_OPERATIONS__ATTEMPTS", "0", "operations.attempts"),
        ("LAKE_GRPC__REFLECTION", '"yes"', "grpc.reflection"),
        ("LAKE_MESH__PEERS", '"127.0.0.1:1"', "mesh.peers"),
    ],
)
def test_every_validator_names_the_key_it_rejected(monkeypatch, name, value, key):
    """A key checked beside others is named itself, not the first of its group."""
    message = refused(monkeypatch, **{name: value})
    assert f"setting {key} in profile 'testing'" in message
    assert name in message


def test_a_pasted_token_line_names_auth_tokens_and_the_form(monkeypatch):
    """The line `lake token new` prints, pasted bare, is refused as auth.tokens."""
    line = '"' + "ab" * 32 + '" = "acme"'
    message = refused(monkeypatch, LAKE_AUTH__TOKENS=line)
    assert "setting auth.tokens" in message
    assert "LAKE_AUTH__TOKENS" in message
    assert "{" in message  # shows the table form to wrap it in


def test_a_rule_is_stated_without_the_value(monkeypatch):
    """The message says what the key must be, and never echoes the value."""
    message = refused(monkeypatch, LAKE_POSTGRES__CONNECT_TIMEOUT="-7.25")
    assert "must be a number > 0" in message
    assert "7.25" not in message


def test_unknown_environment_key_is_refused_with_the_nearest(monkeypatch):
    """A mistyped LAKE_ variable fails and suggests the key it probably meant."""
    message = refused(monkeypatch, LAKE_POSTGRES__MAXSIZE="3")
    assert message == (
        "unknown setting LAKE_POSTGRES__MAXSIZE (postgres.maxsize); "
        "did you mean LAKE_POSTGRES__MAX_SIZE (postgres.max_size)?"
    )


def test_single_underscore_instead_of_double_is_refused(monkeypatch):
    """LAKE_POSTGRES_PASSWORD (one underscore) sets nothing Lake reads: refused."""
    message = refused(monkeypatch, LAKE_POSTGRES_PASSWORD="pw")
    assert "did you mean LAKE_POSTGRES__PASSWORD (postgres.password)?" in message


def test_a_key_below_a_scalar_is_refused(monkeypatch):
    """grpc.address has no sub-keys."""
    message = refused(monkeypatch, LAKE_GRPC__ADDRESS__PORT="1")
    assert "unknown setting LAKE_GRPC__ADDRESS__PORT" in message


def test_unknown_key_inside_a_whole_table_variable_is_refused(monkeypatch):
    """A table given in one variable is checked key by key, naming the variable."""
    message = refused(monkeypatch, LAKE_POSTGRES="{ maxsize = 3 }")
    assert "postgres.maxsize (set by LAKE_POSTGRES)" in message
    assert "did you mean postgres.max_size?" in message


def test_variables_that_are_not_settings_are_accepted(monkeypatch):
    """LAKE_ENV, LAKE_TOKEN and the test harness's variables are not settings."""
    for name, value in {
        "LAKE_ENV": "testing",
        "LAKE_TOKEN": "dev-token",
        "LAKE_TEST_POSTGRES_DSN": "postgresql://x@127.0.0.1:1/x",
        "LAKE_BENCH_REDIS_URL": "redis://127.0.0.1:1/0",
    }.items():
        monkeypatch.setenv(name, value)
    values = load_settings()
    assert "token" not in values
    assert "test_postgres_dsn" not in values


def test_entries_of_free_form_maps_are_accepted(monkeypatch):
    """A peer or a token set entry by entry is a map entry, not an unknown key."""
    monkeypatch.setenv("LAKE_MESH__PEERS__CORTEX", "127.0.0.1:50061")
    monkeypatch.setenv("LAKE_AUTH__TOKENS__" + "AB" * 32, "acme")
    values = load_settings("testing")
    assert values["mesh"]["peers"]["cortex"] == "127.0.0.1:50061"
    assert list(values["auth"]["tokens"].values()) == ["acme"]


def write_settings(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS.read_text() + "\n" + extra)
    return path


def test_unknown_key_in_an_inactive_profile_is_refused(tmp_path):
    """A typo under [production.postgres] fails even when testing is loaded."""
    path = write_settings(tmp_path, "[production.postgres]\nmaxsize = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings("testing", files=str(path))
    assert str(info.value) == (
        f"unknown setting postgres.maxsize in [production] of {path}; "
        "did you mean postgres.max_size?"
    )


def test_unknown_profile_table_is_refused(tmp_path):
    """A table that is no profile would never be read: refused."""
    path = write_settings(tmp_path, "[staging]\nembedded = false\n")
    with pytest.raises(ConfigError, match=r"unknown table \[staging\]"):
        load_settings("testing", files=str(path))


def test_unknown_key_in_the_secrets_file_is_refused(tmp_path):
    """The secrets file beside the settings is held to the same keys."""
    path = write_settings(tmp_path, "")
    (tmp_path / ".secrets.toml").write_text('[default.redis]\npasword = "x"\n')
    with pytest.raises(ConfigError, match=r"did you mean redis\.password\?"):
        load_settings("testing", files=str(path))


def test_known_keys_are_what_the_default_table_defines(tmp_path):
    """A key added to [default] (nested or new table) is known; a map stays open."""
    path = tmp_path / "settings.toml"
    path.write_text(
        "[default.grpc]\naddress = 'x'\nnew_key = 1\n"
        "[default.tls]\ncert = ''\n[default.extra]\nlabels = {}\n"
    )
    schema = Schema.from_file(path)
    assert {"grpc.address", "grpc.new_key", "tls.cert"} <= schema.leaves
    assert "extra.labels" in schema.maps
    assert list(schema.unknown({"extra": {"labels": {"any": "thing"}}})) == []
    assert list(schema.unknown({"tls": {"key": ""}})) == ["tls.key"]


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:99999", "port '99999' is not a number from 0 to 65535"),
        ("nonsense", "'nonsense' is not host:port"),
        ("no-such-host.invalid:50051", "host 'no-such-host.invalid' does not resolve"),
        ("::1:50051", "an IPv6 host needs brackets"),
        ("127.0.0.1:http", "port 'http' is not a number"),
    ],
)
def test_bad_listen_address_is_refused_at_load(monkeypatch, address, problem):
    """grpc.address is checked for shape, port range and resolvability."""
    message = refused(monkeypatch, LAKE_GRPC__ADDRESS=address)
    assert message.startswith(
        "invalid setting grpc.address in profile 'testing' (LAKE_GRPC__ADDRESS): "
    )
    assert problem in message


@pytest.mark.parametrize("address", ["[::1]:0", "localhost:0", "0.0.0.0:50051"])
def test_good_listen_addresses_pass(monkeypatch, address):
    """IPv6 in brackets, names that resolve and the any-address are accepted."""
    monkeypatch.setenv("LAKE_GRPC__ADDRESS", address)
    assert load_settings("testing")["grpc"]["address"] == address


@pytest.mark.parametrize(
    ("peers", "problem"),
    [
        ('{ cortex = "127.0.0.1" }', "is not host:port"),
        ('{ cortex = "127.0.0.1:0" }', "from 1 to 65535"),
        ('{ cortex = ["cortex-a:50061"] }', "list entries are IPv4 addresses"),
        ("{ cortex = [] }", "at least one"),
        ("{ cortex = 5 }", "expected 'host:port'"),
        ('{ cortex = "dns:///" }', "names no host"),
    ],
)
def test_bad_peer_addresses_are_refused(monkeypatch, peers, problem):
    """Each mesh peer is checked, and named by its own key."""
    message = refused(monkeypatch, LAKE_MESH__PEERS=peers)
    assert "invalid setting mesh.peers.cortex" in message
    assert problem in message


def test_good_peer_addresses_pass(monkeypatch):
    """host:port, a list of IPv4 host:port and dns:/// forms are accepted."""
    monkeypatch.setenv(
        "LAKE_MESH__PEERS",
        '{ cortex = "dns:///cortex.svc:50061", stream = ["127.0.0.1:1", "10.0.0.2:2"],'
        ' other = "cortex-host:50061" }',
    )
    assert set(load_settings("testing")["mesh"]["peers"]) == {
        "cortex",
        "stream",
        "other",
    }


def test_a_multi_host_dsn_for_failover_is_accepted(monkeypatch):
    """Several hosts, the one that takes writes (README, PostgreSQL failover)."""
    dsn = "postgresql://lake@db1:5432,db2:5433/lake?target_session_attrs=read-write"
    monkeypatch.setenv("LAKE_POSTGRES__DSN", dsn)
    assert load_settings("testing")["postgres"]["dsn"] == dsn


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("LAKE_POSTGRES__DSN", "host=db password=kv-secret", "not key=value pairs"),
        ("LAKE_POSTGRES__DSN", "mysql://u:pw-secret@db/x", "scheme 'mysql'"),
        (
            "LAKE_POSTGRES__DSN",
            "postgresql://u:pw-secret@db:70000/x",
            "a port is not a number",
        ),
        ("LAKE_REDIS__URL", "http://:pw-secret@cache:6379/0", "scheme 'http'"),
    ],
)
def test_bad_dsn_shapes_are_refused_without_echoing(monkeypatch, name, value, problem):
    """A DSN of the wrong shape is named, and its text (a password) is not shown."""
    message = refused(monkeypatch, **{name: value})
    assert name in message
    assert problem in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "postgresql://lake@db/lake?password=q-secret&sslmode=require",
            "postgresql://lake@db/lake?password=***&sslmode=require",
        ),
        ("host=db password=kv-secret user=lake", "host=db password=*** user=lake"),
        ("host=db password='kv secret' user=lake", "host=db password=*** user=lake"),
        (
            "redis://cache:6379/0?password=rq-secret",
            "redis://cache:6379/0?password=***",
        ),
        ("rediss://:tls-secret@cache:6380/0", "rediss://:***@cache:6380/0"),
        ("postgresql://lake:p%40ss-secret@db/lake", "postgresql://lake:***@db/lake"),
        ("postgresql://lake:p@ss-secret@db/lake", "postgresql://lake:***@db/lake"),
        (
            "postgresql://lake:multi-secret@h1:5432,h2:5432/lake",
            "postgresql://lake:***@h1:5432,h2:5432/lake",
        ),
    ],
)
def test_every_password_form_is_masked(text, shown):
    """URL userinfo, query passwords, key=value DSNs and encoded forms are masked."""
    assert mask_text(text) == shown
    assert masked({"postgres": {"dsn": text}})["postgres"]["dsn"] == shown


def test_lake_config_output_masks_a_query_password(monkeypatch):
    """The effective settings, as lake config prints them, hide DSN query passwords."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", "postgresql://lake@db/lake?password=q-s3")
    monkeypatch.setenv("LAKE_REDIS__URL", "redis://cache:6379/0?password=r-s3")
    shown = str(masked(load_settings("testing")))
    assert "q-s3" not in shown
    assert "r-s3" not in shown
    assert "password=***" in shown


def test_log_lines_mask_every_form_and_bare_dsn_passwords():
    """A log line shows no password: in a DSN, a key=value DSN, or on its own."""
    settings = {
        "postgres": {"password": "", "dsn": "postgresql://u@db/x?password=bare-pg-1"},
        "redis": {"password": "", "url": "rediss://:bare%2Frd-2@cache:6380/0"},
        "timeseries": {"cursor_key": ""},
    }
    register_secrets(secret_values(settings))
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    log = structlog.get_logger("test")
    log.warning("connect_failed", dsn=settings["postgres"]["dsn"])
    log.warning("connect_failed", dsn="host=db password=kv-pw-3 user=u")
    log.warning("connect_failed", error="auth failed for bare-pg-1 and bare/rd-2")
    text = out.getvalue()
    for secret in ("bare-pg-1", "bare/rd-2", "bare%2Frd-2", "kv-pw-3"):
        assert secret not in text
    assert text.count("***") >= 4


def test_private_file_is_0600_before_its_first_byte(tmp_path, monkeypatch):
    """A secret file (new or left 0644 by someone) is 0600 when its text is written."""
    seen: list[int] = []
    real_fdopen = os.fdopen

    def spying_fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        real_write = f.write

        def write(text):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return real_write(text)

        f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", spying_fdopen)
    fresh = tmp_path / "redis.conf"
    embedded.write_private(fresh, "requirepass s3cret\n")
    old = tmp_path / "postgres.password"
    old.write_text("old")
    old.chmod(0o644)
    embedded.write_private(old, "new-secret")
    assert seen == [0o600, 0o600]
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert old.read_text() == "new-secret"


def test_a_kept_password_file_left_readable_is_made_private(tmp_path):
    """The embedded servers' password file is reused, and made 0600 if it was not."""
    path = tmp_path / "redis.password"
    path.write_text("kept-secret\n")
    path.chmod(0o644)
    assert embedded._secret(path) == "kept-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    made = embedded._secret(tmp_path / "new.password")
    assert len(made) >= 24
    assert stat.S_IMODE((tmp_path / "new.password").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://lake:s3cr3t/xyz@db/lake",
        "postgresql://lake:pa#ss@db/lake",
        "postgresql://lake:pa?ss@db/lake",
    ],
)
def test_a_dsn_error_never_shows_part_of_the_password(monkeypatch, dsn):
    """An unencoded '/', '#' or '?' in a password splits the URL there; the error
    says how to fix it without echoing any of it."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", dsn)
    with pytest.raises(ConfigError) as info:
        load_settings("development")
    message = str(info.value)
    assert "postgres.dsn" in message
    for part in ("s3cr3t", "xyz", "pa", "ss@"):
        assert f"'{part}" not in message
    assert "s3cr3t" not in message
