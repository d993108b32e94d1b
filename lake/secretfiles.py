"""
Secrets read from files: ``K_file`` names a file whose content is the secret ``K``.

Orchestrators hand secrets to a process as files (a Kubernetes Secret mounted as a
volume, Docker secrets under /run/secrets), which unlike environment variables do
not show in ``/proc/PID/environ``, ``docker inspect`` or a crash dump's
environment. Every secret setting ``K`` that has a ``K_file`` companion in the
``[default]`` table of ``config/settings.toml`` gets this, with no list here to
keep in step: add the ``_file`` key there and it works.

A string secret is the file's text less its trailing line break (``echo`` and
most editors add one). A secret table (``auth.tokens``) is read as TOML, one
``"<sha256 hex>" = "tenant"`` line per entry, and its entries are added to the
table's own. Errors name the setting and the file, never the content.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from lake.errors import ConfigError
from lake.schema import Schema, env_var

__all__ = ["load_secret_files", "secret_file_keys"]

SUFFIX = "_file"


def secret_file_keys(
    schema: Schema, is_secret: Callable[[str], bool]
) -> list[tuple[str, str]]:
    """
    ``(K, K_file)`` for every secret setting ``K`` the schema gives a ``K_file``.
    """
    known = schema.leaves | schema.maps
    return sorted(
        (key, key + SUFFIX)
        for key in known
        if is_secret(key.rpartition(".")[2]) and key + SUFFIX in schema.leaves
    )


def load_secret_files(
    values: dict[str, Any], pairs: list[tuple[str, str]], profile: str
) -> None:
    """
    Fill each secret ``K`` from the file ``K_file`` names, in place.

    Raises:
        ConfigError: a file that cannot be read, is empty or (for a table) is not
            TOML, or a string secret set both directly and by file.
    """
    for key, file_key in pairs:
        *parents, leaf = key.split(".")
        node: dict[str, Any] = values
        for part in parents:
            node = node[part]
        path = node.get(leaf + SUFFIX)
        if not path:
            continue
        where = f"setting {file_key} in profile {profile!r} ({env_var(file_key)})"
        if not isinstance(path, str):
            msg = f"invalid {where}: must be a string (a file path)"
            raise ConfigError(msg)
        text = _read(path, where)
        current = node.get(leaf)
        if isinstance(current, Mapping):
            node[leaf] = {**current, **_table(text, path, where)}
            continue
        if current not in ("", None):
            msg = f"invalid {where}: {key} is set as well; set one of them"
            raise ConfigError(msg)
        node[leaf] = text


def _read(path: str, where: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().rstrip("\r\n")
    except OSError as exc:
        msg = f"invalid {where}: cannot read {path} ({exc.strerror or exc})"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"invalid {where}: {path} is not UTF-8 text"
        raise ConfigError(msg) from None
    if not text:
        msg = f"invalid {where}: {path} is empty"
        raise ConfigError(msg)
    return text


def _table(text: str, path: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # Not the parser's message: it may quote the text, and the text is secret.
        msg = f'invalid {where}: {path} is not TOML (lines of "name" = value)'
        raise ConfigError(msg) from None
