"""
The cluster suite's fixture: three ``lake serve`` processes started at once on
one fresh database and the session's Redis, a stream peer in the test process,
shared by every test of the package (each test uses tenants of its own).

The start proves the migrations run once: the fixture holds the migration lock
until all three instances wait on it, so the three contend for it for real.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio

from lake.mesh.peers import PeerServer
from lake.resources.embedded import free_port
from lake.stores.migrate import _LOCK_KEY
from tests.cluster.cluster import Instance, RecordingStream, cluster_env
from tests.servers import with_database
from tests.waiting import eventually

SIZE = 3


@dataclass
class Cluster:
    instances: list[Instance]
    dsn: str
    password: str
    stream: RecordingStream

    @property
    def addresses(self) -> list[str]:
        return [i.address for i in self.instances]

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of one query on the cluster's database, as its owner."""
        conn = await asyncpg.connect(self.dsn, password=self.password or None)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


async def _waiting_on_migrations(conn: Any) -> int:
    """Sessions of this database waiting for the migration lock."""
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
        " AND NOT l.granted AND l.objid = $1 AND l.objsubid = 1",
        _LOCK_KEY,
    )
    return int(count)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def cluster(servers, tmp_path_factory) -> AsyncIterator[Cluster]:
    pg = servers["postgres"]
    name = f"lake_cluster_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(pg.url, name)
    peer = PeerServer(RecordingStream())
    await peer.start()
    assert isinstance(peer.peer, RecordingStream)
    logs = tmp_path_factory.mktemp("cluster")
    instances = [
        Instance(
            index=n,
            address=(address := f"127.0.0.1:{free_port()}"),
            env=cluster_env(servers, dsn, address, peer.address),
            logs=logs,
        )
        for n in range(1, SIZE + 1)
    ]
    lock = await asyncpg.connect(dsn, password=pg.password or None)
    try:
        # All three start at once and queue on the migration lock held here.
        await lock.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        for instance in instances:
            instance.start()

        async def all_waiting() -> bool:
            return await _waiting_on_migrations(lock) == SIZE

        await eventually(all_waiting, within=90, every=0.05)
        await lock.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        await lock.close()
        for instance in instances:
            await instance.ready()
        yield Cluster(instances, dsn, pg.password, peer.peer)
    finally:
        for instance in instances:
            if instance.proc is not None and instance.proc.poll() is None:
                await instance.terminate()
            instance.kill()
        await peer.stop(None)
        if not lock.is_closed():
            await lock.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
