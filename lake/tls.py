"""
TLS for gRPC: server credentials that follow their files, client credentials that pin
a CA.

The server's certificate, key and (for mTLS) client CA are read from PEM files.
grpcio asks ``CertificateFiles`` for a configuration before every TLS handshake; it
answers from a ``stat`` of the files and reads them again only when one changed, so
a renewed certificate (written in place, renamed over, or swapped by a Kubernetes
secret mount) serves the next new connection without a restart. A half-written
pair (a new certificate beside the old key) is not taken: the files are checked with
the stdlib ``ssl`` module first, and the last good pair keeps serving.

Clients trust only the CA file they are given (no system roots), and may present a
certificate of their own for mTLS.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from lake.errors import ConfigError

__all__ = [
    "CertificateFiles",
    "ClientTLS",
    "ServerTLS",
    "channel_credentials",
    "channel_options",
    "client_tls_of",
    "grpc_server_credentials",
    "require_readable",
    "server_credentials",
]

log = structlog.get_logger(__name__)

# One file's identity: changes when it is rewritten or replaced.
_Stamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """
    The server's PEM files; ``client_ca_file`` set means clients must present a
    certificate signed by that CA (mTLS).
    """

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @property
    def mutual(self) -> bool:
        """
        Whether client certificates are required.
        """
        return bool(self.client_ca_file)


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """
    What a client trusts (``ca_file``, pinned), what it presents (``cert_file`` and
    ``key_file``, for mTLS) and the name it expects in the server's certificate when
    that differs from the dialled host (``server_name``).
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


def require_readable(*paths: str) -> None:
    """
    Refuse a named TLS file that cannot be read (empty names are skipped).

    Raises:
        ConfigError: naming the first file that cannot be read.
    """
    for path in paths:
        if path and not os.access(path, os.R_OK):
            msg = f"cannot read the TLS file {path}"
            raise ConfigError(msg)


def _check_pair(cert_file: str, key_file: str) -> None:
    """
    Refuse a certificate and key that are not PEM or do not belong together.
    """
    require_readable(cert_file, key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError):
        msg = f"the TLS certificate {cert_file} and key {key_file} are no PEM pair"
        raise ConfigError(msg) from None


def _check_ca(ca_file: str) -> None:
    require_readable(ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError):
        msg = f"the CA file {ca_file} holds no PEM certificate"
        raise ConfigError(msg) from None


def _stamp(path: str) -> _Stamp:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class CertificateFiles:
    """
    The server's certificate configuration, read again whenever its files change.

    Call it (grpcio does, before each handshake): ``None`` means "unchanged".
    """

    def __init__(self, tls: ServerTLS) -> None:
        self._tls = tls
        self._paths = [tls.cert_file, tls.key_file]
        if tls.mutual:
            self._paths.append(tls.client_ca_file)
        self._lock = threading.Lock()
        self._stamps = self._stat()
        self._failed: tuple[_Stamp, ...] | None = None
        self.initial = self._load()

    def _stat(self) -> tuple[_Stamp, ...] | None:
        try:
            return tuple(_stamp(p) for p in self._paths)
        except OSError:
            return None  # mid-replacement: keep serving what we have

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        _check_pair(tls.cert_file, tls.key_file)
        key = _read(tls.key_file, "TLS key")
        chain = _read(tls.cert_file, "TLS certificate")
        ca = None
        if tls.mutual:
            _check_ca(tls.client_ca_file)
            ca = _read(tls.client_ca_file, "client CA")
        return grpc.ssl_server_certificate_configuration([(key, chain)], ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """
        The new configuration when a file changed since the last load, else None.
        """
        stamps = self._stat()
        if stamps is None or stamps in (self._stamps, self._failed):
            return None
        with self._lock:
            if stamps in (self._stamps, self._failed):
                return None
            try:
                config = self._load()
            except ConfigError as exc:
                # Logged once; the next change (the key following its certificate,
                # say) is tried again.
                self._failed = stamps
                log.warning("tls_reload_failed", error=str(exc))
                return None
            if self._stat() != stamps:
                # A file changed while it was checked and read: the pair may not
                # match. Keep serving the old one; the next handshake tries again.
                return None
            self._stamps = stamps
        log.info("tls_certificate_reloaded", cert_file=self._tls.cert_file)
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """
    Server credentials that reload their files when they change.

    Raises:
        ConfigError: a file is missing, unreadable, or the pair does not match.
    """
    files = CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.initial,
        # grpc-stubs omit the documented None ("unchanged") from the return type.
        files,  # type: ignore[arg-type]
        require_client_authentication=tls.mutual,
    )


def channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    """
    Channel credentials that trust only ``tls.ca_file``, with a client certificate
    when one is given.

    Raises:
        ConfigError: a file is missing or unreadable, or only one of cert/key given.
    """
    if bool(tls.cert_file) != bool(tls.key_file):
        msg = "a client certificate needs both its cert file and its key file"
        raise ConfigError(msg)
    _check_ca(tls.ca_file)
    key = chain = None
    if tls.cert_file:
        _check_pair(tls.cert_file, tls.key_file)
        key = _read(tls.key_file, "TLS key")
        chain = _read(tls.cert_file, "TLS certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "CA"),
        private_key=key,
        certificate_chain=chain,
    )


def channel_options(tls: ClientTLS | None) -> list[tuple[str, str]]:
    """
    Channel options for ``tls``: the expected server name, when overridden.
    """
    if tls is None or not tls.server_name:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]


def grpc_server_credentials(
    settings: Mapping[str, Any],
) -> grpc.ServerCredentials | None:
    """
    Server credentials from the ``grpc.tls`` settings; None when TLS is off.
    """
    if not settings["cert_file"]:
        return None
    return server_credentials(
        ServerTLS(
            cert_file=settings["cert_file"],
            key_file=settings["key_file"],
            client_ca_file=settings["client_ca_file"],
        )
    )


def client_tls_of(settings: Mapping[str, Any]) -> ClientTLS | None:
    """
    Client TLS from a ``*.tls`` settings table (``mesh.tls``, ``client.tls``); None
    when it names no CA.
    """
    if not settings.get("ca_file"):
        return None
    return ClientTLS(
        ca_file=settings["ca_file"],
        cert_file=settings.get("cert_file", ""),
        key_file=settings.get("key_file", ""),
        server_name=settings.get("server_name", ""),
    )
