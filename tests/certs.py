"""
Test CAs and certificates (made by trustme), written as PEM files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pem:
    """
    A certificate (chain) file and its key file.
    """

    cert: Path
    key: Path


def write_ca(ca: trustme.CA, path: Path) -> Path:
    """
    Write ``ca``'s certificate to ``path``; return it.
    """
    ca.cert_pem.write_to_path(str(path))
    return path


def issue(ca: trustme.CA, directory: Path, name: str, *hosts: str) -> Pem:
    """
    Issue a certificate for ``hosts`` (default: 127.0.0.1) into ``directory``.
    """
    cert = ca.issue_cert(*(hosts or ("127.0.0.1",)))
    pem = Pem(directory / f"{name}.pem", directory / f"{name}.key")
    pem.cert.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(pem.key))
    pem.key.chmod(0o600)
    return pem
