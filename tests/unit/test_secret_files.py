"""
Secrets from files (``K_file``): every secret setting has one, the file's text is
the secret, and a file that cannot serve is refused naming the setting, never
showing the content.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lake.config import _SECRET_KEY, load_settings, masked, secret_values
from lake.errors import ConfigError
from lake.schema import Schema
from lake.secretfiles import secret_file_keys

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "settings.toml"
PRODUCTION = {
    "LAKE_POSTGRES__DSN": "postgresql://lake@db:5432/lake",
    "LAKE_REDIS__URL": "redis://cache:6379/0",
    "LAKE_GRPC__TLS__BEHIND_PROXY": "true",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name)


def secret(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def refusal(monkeypatch, profile: str = "testing", **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(profile)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_secret_setting_has_a_file_companion():
    """Each key the masking calls secret can come from a file instead."""
    schema = Schema.from_file(SETTINGS)
    secrets = {
        key
        for key in schema.leaves | schema.maps
        if _SECRET_KEY.search(key.rpartition(".")[2]) and not key.endswith("_file")
    }
    pairs = secret_file_keys(schema, lambda k: bool(_SECRET_KEY.search(k)))
    assert {key for key, _ in pairs} == secrets
    assert secrets >= {
        "postgres.password",
        "redis.password",
        "auth.tokens",
        "timeseries.cursor_key",
    }


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("LAKE_POSTGRES__PASSWORD_FILE", ("postgres", "password")),
        ("LAKE_REDIS__PASSWORD_FILE", ("redis", "password")),
        ("LAKE_TIMESERIES__CURSOR_KEY_FILE", ("timeseries", "cursor_key")),
    ],
)
def test_a_secret_is_the_file_text_less_its_line_break(
    tmp_path, monkeypatch, variable, key
):
    """What `echo pw > file` or a mounted Secret holds becomes the setting."""
    monkeypatch.setenv(variable, secret(tmp_path, "s", "p@ss word \n"))
    values = load_settings("testing")
    assert values[key[0]][key[1]] == "p@ss word "
    assert "p@ss word " in secret_values(values)


def test_a_crlf_line_break_is_dropped_too(tmp_path, monkeypatch):
    """A file saved with Windows line ends gives the same secret."""
    path = secret(tmp_path, "pw", b"s3cret\r\n")
    monkeypatch.setenv("LAKE_POSTGRES__PASSWORD_FILE", path)
    assert load_settings("testing")["postgres"]["password"] == "s3cret"


def test_the_file_setting_is_shown_and_the_secret_masked(tmp_path, monkeypatch):
    """`lake config` shows where the secret is, not what it is."""
    path = secret(tmp_path, "pw", "s3cret\n")
    monkeypatch.setenv("LAKE_POSTGRES__PASSWORD_FILE", path)
    shown = masked(load_settings("testing"))
    assert shown["postgres"]["password_file"] == path
    assert shown["postgres"]["password"] == "***"
    assert "s3cret" not in repr(shown)


def test_a_missing_file_is_refused_naming_the_setting(tmp_path, monkeypatch):
    """The error says which setting, which variable and which file."""
    missing = str(tmp_path / "nope")
    message = refusal(monkeypatch, LAKE_REDIS__PASSWORD_FILE=missing)
    assert "redis.password_file" in message
    assert "LAKE_REDIS__PASSWORD_FILE" in message
    assert missing in message


def test_an_unreadable_file_is_refused(tmp_path, monkeypatch):
    """A directory (or a file without read permission) cannot be a secret."""
    message = refusal(monkeypatch, LAKE_POSTGRES__PASSWORD_FILE=str(tmp_path))
    assert "postgres.password_file" in message
    assert "cannot read" in message


def test_an_empty_file_is_refused(tmp_path, monkeypatch):
    """An empty mounted key is a mistake, not an empty password."""
    path = secret(tmp_path, "pw", "\n")
    message = refusal(monkeypatch, LAKE_POSTGRES__PASSWORD_FILE=path)
    assert "postgres.password_file" in message
    assert "empty" in message


def test_binary_content_is_refused_without_showing_it(tmp_path, monkeypatch):
    """Bytes that are not UTF-8 are refused; the error never quotes them."""
    path = secret(tmp_path, "pw", b"\xff\xfe-s3cret")
    message = refusal(monkeypatch, LAKE_POSTGRES__PASSWORD_FILE=path)
    assert "UTF-8" in message
    assert "s3cret" not in message


def test_a_secret_set_twice_is_refused(tmp_path, monkeypatch):
    """The value and a file for one secret: ambiguous, so neither wins."""
    path = secret(tmp_path, "pw", "from-file")
    message = refusal(
        monkeypatch,
        LAKE_POSTGRES__PASSWORD="from-env",
        LAKE_POSTGRES__PASSWORD_FILE=path,
    )
    assert "postgres.password" in message
    assert "from-file" not in message
    assert "from-env" not in message


def token_line(token: str, tenant: str) -> str:
    return f'"{hashlib.sha256(token.encode()).hexdigest().upper()}" = "{tenant}"\n'


def test_tokens_file_adds_entries_and_satisfies_production(tmp_path, monkeypatch):
    """Production needs tokens; a tokens file (hashes, any case) gives them."""
    path = secret(
        tmp_path,
        "tokens.toml",
        token_line("t1", "acme")
        + f'"{"ab" * 32}" = {{ tenant = "ops", scope = "admin" }}\n',
    )
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LAKE_AUTH__TOKENS_FILE", path)
    tokens = load_settings("production")["auth"]["tokens"]
    assert tokens == {
        hashlib.sha256(b"t1").hexdigest(): "acme",
        "ab" * 32: {"tenant": "ops", "scope": "admin"},
    }


def test_tokens_file_adds_to_the_profile_tokens(tmp_path, monkeypatch):
    """In development the file's tokens join the development token."""
    path = secret(tmp_path, "tokens.toml", token_line("t1", "acme"))
    monkeypatch.setenv("LAKE_AUTH__TOKENS_FILE", path)
    tokens = load_settings("development")["auth"]["tokens"]
    assert len(tokens) == 2
    assert tokens[hashlib.sha256(b"t1").hexdigest()] == "acme"


def test_production_without_tokens_is_still_refused(monkeypatch):
    """The production rule stands when no tokens file is named."""
    message = refusal(monkeypatch, "production", **PRODUCTION)
    assert "auth.tokens" in message


def test_a_tokens_file_that_is_not_toml_is_refused_without_content(
    tmp_path, monkeypatch
):
    """A pasted raw token instead of its hash line: refused, never echoed."""
    path = secret(tmp_path, "tokens.toml", "lk_live_SECRETSECRET\n")
    message = refusal(monkeypatch, LAKE_AUTH__TOKENS_FILE=path)
    assert "auth.tokens_file" in message
    assert "SECRETSECRET" not in message


def test_a_bad_token_entry_in_the_file_is_refused(tmp_path, monkeypatch):
    """The entries are checked as auth.tokens entries are."""
    path = secret(tmp_path, "tokens.toml", '"not-a-hash" = "acme"\n')
    message = refusal(monkeypatch, LAKE_AUTH__TOKENS_FILE=path)
    assert "auth.tokens" in message


def test_file_content_is_never_a_dynaconf_template(tmp_path, monkeypatch):
    """A secret that looks like @format/@jinja is kept as text, not rendered."""
    path = secret(tmp_path, "pw", "@format {env[HOME]}\n")
    monkeypatch.setenv("LAKE_POSTGRES__PASSWORD_FILE", path)
    values = load_settings("testing")
    assert values["postgres"]["password"] == "@format {env[HOME]}"
