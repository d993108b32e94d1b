"""
A real PgBouncer (Debian's ``pgbouncer``; .ci/run installs it) in front of a
PostgreSQL, on a free loopback port, for the tests and the scale benchmark.

Every database name is passed through to the same name upstream (``* =``), so a
test's fresh database is reachable through the bouncer as it is directly. The
client authenticates to PgBouncer with the upstream password (SCRAM), and
PgBouncer logs in upstream with it. PgBouncer refuses to run as root: as root it
runs as the embedded PostgreSQL's unprivileged user, in a directory that user owns.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lake.resources.embedded import (
    _PG_OS_USER,
    Endpoint,
    _ensure_os_user,
    _is_root,
    _open_path_to,
    free_port,
)

__all__ = ["pgbouncer_binary", "run_pgbouncer"]

_START_S = 30.0


def pgbouncer_binary() -> str:
    """
    The machine's pgbouncer; a missing one fails (never skips) the caller.
    """
    found = shutil.which("pgbouncer") or shutil.which(
        "pgbouncer", path="/usr/sbin:/usr/local/sbin"
    )
    if found is None:
        msg = "no pgbouncer found: apt-get install pgbouncer (.ci/run does)"
        raise RuntimeError(msg)
    return found


def _ini(upstream: Endpoint, port: int, folder: Path, pool_size: int) -> str:
    parts = urlsplit(upstream.url)
    auth = "scram-sha-256" if upstream.password else "trust"
    return "\n".join(
        [
            "[databases]",
            f"* = host={parts.hostname} port={parts.port or 5432}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            f"auth_type = {auth}",
            f"auth_file = {folder / 'users.txt'}",
            "pool_mode = transaction",
            # Few server connections for many clients: they are shared for real.
            f"default_pool_size = {pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 500",
            f"logfile = {folder / 'pgbouncer.log'}",
            "pidfile =",
            # No ignore_startup_parameters: a client that sends one PgBouncer
            # does not know is refused, as a default PgBouncer refuses it.
            "",
        ]
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace") if log.exists() else ""
            msg = f"pgbouncer exited at start ({proc.returncode}): {tail[-500:]}"
            raise RuntimeError(msg)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    msg = f"pgbouncer did not listen in {_START_S:g} s"
    raise RuntimeError(msg)


@contextmanager
def run_pgbouncer(
    upstream: Endpoint, folder: Path, *, pool_size: int = 2
) -> Iterator[Endpoint]:
    """
    PgBouncer in transaction pooling mode in front of ``upstream``, at most
    ``pool_size`` server connections per database and user; its endpoint (the
    upstream's URL and password, on PgBouncer's port). Stopped on exit.
    """
    binary = pgbouncer_binary()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    parts = urlsplit(upstream.url)
    user = parts.username or "postgres"
    users = folder / "users.txt"
    users.write_text(f'"{user}" "{upstream.password}"\n', encoding="utf-8")
    users.chmod(0o600)
    ini = folder / "pgbouncer.ini"
    ini.write_text(_ini(upstream, port, folder, pool_size), encoding="utf-8")
    command = [binary, str(ini)]
    if _is_root():
        _ensure_os_user(_PG_OS_USER)
        _open_path_to(folder)
        for path in (folder, users, ini):
            shutil.chown(path, _PG_OS_USER, _PG_OS_USER)
        command = [binary, "-u", _PG_OS_USER, str(ini)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, proc, folder / "pgbouncer.log")
        netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else ""
        url = urlunsplit(parts._replace(netloc=netloc or f"127.0.0.1:{port}"))
        yield Endpoint(url=url, password=upstream.password)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
