"""
Where and how a client connects: the target (one address, several, or a
``dns:///`` name), TLS pinned to one CA, and the channel options that carry the
retry policy.

Mirrors ``lake.tls``'s client half without its logging, so ``lake.client`` needs
nothing beyond grpcio and protobuf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from lake.client.policy import channel_options
from lake.errors import ConfigError

__all__ = ["TLS", "Target", "credentials", "options", "target_of"]

Target = str | Sequence[str]


@dataclass(frozen=True, slots=True)
class TLS:
    """
    What the client trusts (``ca_file``: only this CA, never the system's roots),
    what it presents for mTLS (``cert_file`` and ``key_file``) and the name it
    expects in the server's certificate when the dialled host differs
    (``server_name``).
    """

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read the {what} file {path} ({exc.strerror})"
        raise ConfigError(msg) from None


def credentials(tls: TLS) -> grpc.ChannelCredentials:
    """
    Channel credentials trusting ``tls.ca_file``, presenting the client's
    certificate when one is named.

    Raises:
        ConfigError: a file cannot be read, or a certificate comes without its key.
    """
    if bool(tls.cert_file) != bool(tls.key_file):
        msg = "a client certificate needs its key (and a key its certificate)"
        raise ConfigError(msg)
    ca = _read(tls.ca_file, "CA")
    key = _read(tls.key_file, "TLS key") if tls.key_file else None
    chain = _read(tls.cert_file, "TLS certificate") if tls.cert_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def _ipv4(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return port.isdigit()


def target_of(target: Target) -> tuple[str, bool]:
    """
    The grpcio target for ``target`` and whether to balance over its addresses.

    A string is used as given (``host:port``, ``ipv4:a:p,b:p``, ``dns:///name:port``);
    a list of ``ip:port`` addresses becomes an ``ipv4:`` list. Several addresses,
    an ``ipv4:`` list and a ``dns:///`` name are balanced round robin.

    Raises:
        ConfigError: an empty list, or a list naming something other than
            IPv4 ``ip:port`` addresses (use one ``dns:///`` name for host names).
    """
    if isinstance(target, str):
        spread = target.startswith(("dns:", "ipv4:", "ipv6:"))
        return target, spread
    addresses = [str(a) for a in target]
    if len(addresses) == 1:
        return addresses[0], False
    if not addresses or not all(_ipv4(a) for a in addresses):
        msg = "several addresses must be IPv4 ip:port (or give one dns:/// name)"
        raise ConfigError(msg)
    return "ipv4:" + ",".join(addresses), True


def options(
    tls: TLS | None, *, round_robin: bool, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """
    The channel options: the retry policy (and round robin), the TLS name
    override, then ``extra`` (which may override any of them).
    """
    found = channel_options(round_robin=round_robin)
    if tls is not None and tls.server_name:
        found.append(("grpc.ssl_target_name_override", tls.server_name))
    return [*found, *extra]
