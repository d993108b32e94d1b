"""
What a setting may be called and what an address may look like.

The known keys are exactly those the ``[default]`` table of the bundled
``config/settings.toml`` defines, nested tables included, so a key added there is
known everywhere at once. A key anywhere else (a ``LAKE_*`` variable, a profile
table, another settings file) that the default table does not define is refused
with the nearest known key. Addresses are checked for shape (and the listen host
for resolvability) before anything starts.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import socket
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lake.errors import ConfigError

__all__ = [
    "REDIS_DEFAULT_PORTS",
    "REDIS_MODES",
    "Schema",
    "check_addresses",
    "check_environ",
    "check_files",
    "check_tree",
    "env_var",
    "listen_problem",
    "not_settings",
    "split_host_port",
    "split_nodes",
]

# Settings whose value is a map with names the operator chooses (peer names, token
# hashes). A table left empty in [default] (`x = {}`) is such a map as well.
MAP_KEYS = frozenset({"mesh.peers", "auth.tokens"})
# LAKE_* variables that are not settings: dynaconf's profile switch, the settings
# file list, the token the shell commands send, and the test and benchmark
# harnesses' server addresses.
NOT_SETTINGS = frozenset({"LAKE_ENV", "LAKE_SETTINGS_FILES", "LAKE_TOKEN"})
NOT_SETTINGS_PREFIXES = ("LAKE_TEST_", "LAKE_BENCH_")
# redis.mode, and the port of a host its url lists without one.
REDIS_MODES = ("standalone", "sentinel", "cluster")
REDIS_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
_PROFILE_TABLES = ("default", "global", "development", "testing", "production")


def env_var(key: str) -> str:
    """
    The environment variable that sets ``key`` (``postgres.max_size`` ->
    ``LAKE_POSTGRES__MAX_SIZE``).
    """
    return "LAKE_" + key.upper().replace(".", "__")


@dataclass(frozen=True, slots=True)
class Schema:
    """
    The dotted names of the known settings: scalar leaves, free-form maps, tables.
    """

    leaves: frozenset[str]
    maps: frozenset[str]
    tables: frozenset[str]

    @classmethod
    def from_file(cls, path: Path) -> Schema:
        """
        Read the known keys from the ``[default]`` table of ``path``.
        """
        with path.open("rb") as f:
            default = tomllib.load(f).get("default", {})
        leaves: set[str] = set()
        maps: set[str] = set()
        tables: set[str] = set()

        def walk(table: Mapping[str, Any], prefix: str) -> None:
            for key, value in table.items():
                path = prefix + key.lower()
                if path in MAP_KEYS or (isinstance(value, Mapping) and not value):
                    maps.add(path)
                elif isinstance(value, Mapping):
                    tables.add(path)
                    walk(value, path + ".")
                else:
                    leaves.add(path)

        walk(default, "")
        return cls(frozenset(leaves), frozenset(maps), frozenset(tables))

    def nearest(self, path: str) -> str | None:
        """
        The known key closest to ``path``, if any is close.
        """
        known = sorted(self.leaves | self.maps)
        found = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
        return found[0] if found else None

    def unknown(self, tree: Mapping[Any, Any], prefix: str = "") -> Iterator[str]:
        """
        Yield the dotted name of every key in ``tree`` that is not a known setting.
        """
        for key, value in tree.items():
            name = str(key).lower()
            path = prefix + name
            if name.startswith("dynaconf_") or path in self.leaves | self.maps:
                continue
            if path in self.tables and isinstance(value, Mapping):
                yield from self.unknown(value, path + ".")
            else:
                # A value where a table belongs is as wrong as an unknown name.
                yield path

    def knows_env(self, path: str) -> bool:
        """
        Whether ``path`` (from a ``LAKE_*`` name) sets a known key, a table or an
        entry of a free-form map.
        """
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            head = ".".join(parts[:i])
            if head in self.maps:
                return True
            if head in self.leaves:
                return i == len(parts)
            if head not in self.tables:
                return False
        return True


def _did_you_mean(schema: Schema, path: str, *, env: bool) -> str:
    near = schema.nearest(path)
    if near is None:
        return ""
    return (
        f"; did you mean {env_var(near)} ({near})?"
        if env
        else f"; did you mean {near}?"
    )


def _not_a_setting(name: str) -> bool:
    return name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES)


def not_settings(environ: Mapping[str, str]) -> set[str]:
    """
    The top-level keys dynaconf made from ``LAKE_*`` variables that are not
    settings (``LAKE_TOKEN`` -> ``token``): to drop from the loaded values.
    """
    return {n.removeprefix("LAKE_").lower() for n in environ if _not_a_setting(n)}


def check_environ(environ: Mapping[str, str], schema: Schema) -> None:
    """
    Refuse a ``LAKE_*`` variable that names no setting.

    Raises:
        ConfigError: naming the variable and the nearest known one.
    """
    for name in sorted(environ):
        if not name.startswith("LAKE_") or _not_a_setting(name):
            continue
        path = name.removeprefix("LAKE_").lower().replace("__", ".")
        if not schema.knows_env(path):
            hint = _did_you_mean(schema, path, env=True)
            msg = f"unknown setting {name} ({path}){hint}"
            raise ConfigError(msg)


def check_files(files: list[Path], schema: Schema) -> None:
    """
    Refuse a key in any profile table of the TOML settings files that names no
    setting, whichever profile is active.

    Raises:
        ConfigError: naming the key, the table, the file and the nearest known key.
    """
    for file in files:
        if file.suffix != ".toml":
            continue  # other formats are checked once loaded (check_tree)
        try:
            with file.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            msg = f"settings file {file} is not valid TOML: {exc}"
            raise ConfigError(msg) from None
        for table, body in data.items():
            if table.lower() not in _PROFILE_TABLES or not isinstance(body, Mapping):
                tables = ", ".join(_PROFILE_TABLES)
                msg = f"unknown table [{table}] in {file}; tables are {tables}"
                raise ConfigError(msg)
            for path in schema.unknown(body):
                hint = _did_you_mean(schema, path, env=False)
                msg = f"unknown setting {path} in [{table}] of {file}{hint}"
                raise ConfigError(msg)


def check_tree(
    values: Mapping[str, Any], schema: Schema, environ: Mapping[str, str]
) -> None:
    """
    Refuse any unknown key in the loaded settings (a whole table set from one
    variable, a settings file in another format), naming the variable that set it
    when one did.

    Raises:
        ConfigError: naming the key and the nearest known key.
    """
    for path in schema.unknown(values):
        parts = path.split(".")
        source = next(
            (
                env_var(".".join(parts[:i]))
                for i in range(len(parts), 0, -1)
                if env_var(".".join(parts[:i])) in environ
            ),
            None,
        )
        where = f" (set by {source})" if source else ""
        hint = _did_you_mean(schema, path, env=False)
        msg = f"unknown setting {path}{where}{hint}"
        raise ConfigError(msg)


def split_host_port(text: str, *, port_zero: bool = True) -> tuple[str, int]:
    """
    Split ``host:port`` (``[v6]:port`` for IPv6) and check the port's range.

    Raises:
        ValueError: what is wrong, in words.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        msg = f"{text!r} is not host:port"
        raise ValueError(msg)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        msg = f"{text!r}: an IPv6 host needs brackets, as in [::1]:50051"
        raise ValueError(msg)
    low = 0 if port_zero else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        msg = f"{text!r}: port {port!r} is not a number from {low} to 65535"
        raise ValueError(msg)
    return host, int(port)


def split_nodes(url: str, default_port: int) -> list[tuple[str, int]]:
    """
    The ``host:port`` list of a multi-host URL (``redis://u:p@h1:1,h2,[::1]:3/0``),
    ``default_port`` where a host names none.

    Raises:
        ValueError: a host that is empty or a port out of range, in words.
    """
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for entry in netloc.split(","):
        bare = entry.rpartition("]")[2] if entry.startswith("[") else entry
        text = entry if ":" in bare else f"{entry}:{default_port}"
        host, port = split_host_port(text, port_zero=False)
        nodes.append((host, port))
    return nodes


def _resolvable(host: str, port: int) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            msg = f"host {host!r} does not resolve"
            raise ValueError(msg) from None


def _check_listen(address: str) -> None:
    host, port = split_host_port(address)
    _resolvable(host, port)


def _check_peer(spec: object) -> None:
    if isinstance(spec, list):
        if not spec or not all(isinstance(s, str) for s in spec):
            msg = "a list must hold at least one 'ip:port' string"
            raise ValueError(msg)
        for entry in spec:
            # A list becomes one "ipv4:a,b" target, which takes addresses only.
            host, _ = split_host_port(entry, port_zero=False)
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                msg = (
                    f"{entry!r}: list entries are IPv4 addresses "
                    "(dns:///name:port for names)"
                )
                raise ValueError(msg) from None
        return
    if not isinstance(spec, str):
        msg = "expected 'host:port', a list of them, or 'dns:///name:port'"
        raise ValueError(msg)  # noqa: TRY004 -- one error type for every bad value
    if spec.startswith("dns:"):
        rest = spec.removeprefix("dns:")
        name = rest[2:].partition("/")[2] if rest.startswith("//") else rest
        if not name or name.startswith(":"):
            msg = f"{spec!r} names no host (dns:///name:port)"
            raise ValueError(msg)
        if ":" in name:
            split_host_port(name, port_zero=False)
        return
    split_host_port(spec, port_zero=False)


def _check_url(value: str, schemes: tuple[str, ...], what: str) -> None:
    if not value:
        return
    if "://" not in value:
        msg = f"expected a {what} URL ({schemes[0]}://...), not key=value pairs"
        raise ValueError(msg)
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        msg = f"scheme {parts.scheme!r} is not one of {', '.join(schemes)}"
        raise ValueError(msg)
    for hostport in parts.netloc.rpartition("@")[2].split(","):
        port = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
        _, sep, port = port.rpartition(":")
        if sep and (not port.isdigit() or not 1 <= int(port) <= 65535):
            # Never the text itself: a password with an unencoded '/', '#' or '?'
            # splits there and would be shown here as the "port".
            msg = (
                "a port is not a number from 1 to 65535 (percent-encode any '/',"
                " '#', '?' or '@' in the password)"
            )
            raise ValueError(msg)


def _check_replica(entry: tuple[int, str]) -> None:
    index, dsn = entry
    try:
        _check_url(dsn, ("postgresql", "postgres"), "postgresql")
    except ValueError as exc:
        msg = f"entry {index + 1}: {exc}"
        raise ValueError(msg) from None


def _check_collector(value: str) -> None:
    if not value:
        msg = "tracing with the otlp exporter needs a collector (http://host:4317)"
        raise ValueError(msg)
    _check_url(value, ("http", "https"), "collector")


def check_addresses(values: Mapping[str, Any], profile: str) -> None:
    """
    Check grpc.address and metrics.address (shape, port range, host resolves),
    every mesh peer, the OTLP collector's URL when tracing exports to one, and the
    shape of postgres.dsn, each postgres.replica_dsns entry and redis.url, before
    anything starts.

    Raises:
        ConfigError: one line naming the key, its variable and the problem; a DSN's
            text is never echoed (it may hold a password).
    """
    checks: list[tuple[str, Any, Any]] = [
        ("grpc.address", values["grpc"]["address"], _check_listen),
        (
            "postgres.dsn",
            values["postgres"]["dsn"],
            lambda v: _check_url(v, ("postgresql", "postgres"), "postgresql"),
        ),
        (
            "redis.url",
            values["redis"]["url"],
            lambda v: _check_url(v, ("redis", "rediss", "unix"), "redis"),
        ),
    ]
    checks += [
        ("postgres.replica_dsns", (i, dsn), _check_replica)
        for i, dsn in enumerate(values["postgres"]["replica_dsns"])
    ]
    if values["metrics"]["address"]:  # empty: no metrics endpoint
        checks.append(("metrics.address", values["metrics"]["address"], _check_listen))
    tracing = values["tracing"]
    if tracing["enabled"] and tracing["exporter"] == "otlp":
        checks.append(("tracing.endpoint", tracing["endpoint"], _check_collector))
    checks += [
        (f"mesh.peers.{name}", spec, _check_peer)
        for name, spec in values["mesh"]["peers"].items()
    ]
    for key, value, check in checks:
        try:
            check(value)
        except ValueError as exc:
            msg = (
                f"invalid setting {key} in profile {profile!r} ({env_var(key)}): {exc}"
            )
            raise ConfigError(msg) from None


def listen_problem(address: str) -> str | None:
    """
    Why ``address`` (host:port) cannot be listened on right now, or None when a
    plain socket can bind it (port 0 always can).

    A bind probe with SO_REUSEADDR (so closing connections do not count) and
    without SO_REUSEPORT (so a live server on the port does).
    """
    try:
        host, port = split_host_port(address)
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, OSError, UnicodeError):
        return "is not a valid listen address"
    if port == 0:
        return None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return _BIND_ERRORS.get(exc.errno or 0, f"cannot be bound ({exc.strerror})")
    return None


_BIND_ERRORS = {
    errno.EADDRINUSE: "is already in use by another process",
    errno.EADDRNOTAVAIL: "is not an address of this machine",
    errno.EACCES: "needs privileges to bind (a port below 1024?)",
}
