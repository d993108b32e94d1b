"""
TLS and mTLS on the gRPC port, certificate reload, and the TLS clients: the lake
command and the mesh.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from dependency_injector import providers

from lake.api.auth import hash_token
from lake.api.server import LakeServer
from lake.config import load_settings
from lake.container import aresolve, create_container
from lake.errors import MeshUnavailableError
from lake.health import Status
from lake.manager import ServiceManager
from lake.mesh.client import open_mesh
from lake.mesh.peers import CortexPeer, PeerServer
from lake.tls import ClientTLS, ServerTLS, channel_credentials, server_credentials
from lake.v1 import health_pb2, health_pb2_grpc
from tests.api.conftest import api_settings
from tests.certs import Pem, issue, write_ca

LAKE = [sys.executable, "-m", "lake"]
TOKEN = "tls-token"


@dataclass(frozen=True)
class Pki:
    """
    A CA that Lake trusts and a foreign one, with certificates from both.
    """

    ca: Path
    server: Pem
    client: Pem
    foreign_ca: Path
    foreign_server: Pem
    foreign_client: Pem


@pytest.fixture
def pki(tmp_path) -> Pki:
    ours, theirs = trustme.CA(), trustme.CA()
    return Pki(
        ca=write_ca(ours, tmp_path / "ca.pem"),
        server=issue(ours, tmp_path, "server"),
        client=issue(ours, tmp_path, "client", "lake-client"),
        foreign_ca=write_ca(theirs, tmp_path / "foreign-ca.pem"),
        foreign_server=issue(theirs, tmp_path, "foreign-server"),
        foreign_client=issue(theirs, tmp_path, "foreign-client", "lake-client"),
    )


@asynccontextmanager
async def tls_lake(
    manager: ServiceManager, tls: ServerTLS
) -> AsyncIterator[LakeServer]:
    """A Lake gRPC server on 127.0.0.1:0 serving TLS with ``tls``'s files, built
    through the container with ``manager`` and the credentials put in place."""
    tokens = {hash_token(TOKEN): "tenant-a"}
    container = create_container(api_settings(load_settings("testing"), tokens=tokens))
    container.manager.override(providers.Object(manager))
    container.server_credentials.override(providers.Object(server_credentials(tls)))
    server: LakeServer = await aresolve(container.server)
    await server.start()
    await server.serving()
    try:
        yield server
    finally:
        await server.stop(0.5)


async def get_health(address: str, tls: ClientTLS | None) -> bool:
    """Ask LakeHealth.GetHealth over a fresh channel; return ``ready``."""
    channel = (
        grpc.aio.insecure_channel(address)
        if tls is None
        else grpc.aio.secure_channel(address, channel_credentials(tls))
    )
    async with channel:
        stub = health_pb2_grpc.LakeHealthStub(channel)
        reply = await stub.GetHealth(health_pb2.GetHealthRequest(), timeout=10)
    return reply.ready


async def refused(address: str, tls: ClientTLS | None) -> grpc.StatusCode:
    """The status a client gets when its connection is refused."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_health(address, tls)
    return info.value.code()


async def test_tls_client_with_the_right_ca_gets_answers(manager, pki):
    """A client trusting Lake's CA is answered over TLS."""
    tls = ServerTLS(str(pki.server.cert), str(pki.server.key))
    async with tls_lake(manager, tls) as server:
        assert await get_health(server.address, ClientTLS(str(pki.ca))) is True


async def test_plaintext_and_wrong_ca_clients_are_refused(manager, pki):
    """A plaintext client, and one trusting another CA, never get an answer."""
    tls = ServerTLS(str(pki.server.cert), str(pki.server.key))
    async with tls_lake(manager, tls) as server:
        assert await refused(server.address, None) == grpc.StatusCode.UNAVAILABLE
        wrong = ClientTLS(str(pki.foreign_ca))
        assert await refused(server.address, wrong) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_client_ca(manager, pki):
    """With a client CA, only clients presenting a certificate it signed get in."""
    tls = ServerTLS(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    ca = str(pki.ca)
    async with tls_lake(manager, tls) as server:
        no_cert = ClientTLS(ca)
        assert await refused(server.address, no_cert) == grpc.StatusCode.UNAVAILABLE
        foreign = ClientTLS(
            ca, str(pki.foreign_client.cert), str(pki.foreign_client.key)
        )
        assert await refused(server.address, foreign) == grpc.StatusCode.UNAVAILABLE
        good = ClientTLS(ca, str(pki.client.cert), str(pki.client.key))
        assert await get_health(server.address, good) is True


def replace(target: Path, source: Path) -> None:
    """Swap ``target`` for a copy of ``source`` at once, as a deploy would."""
    temporary = target.with_suffix(".new")
    temporary.write_bytes(source.read_bytes())
    os.replace(temporary, target)


async def test_new_certificate_serves_new_connections_without_restart(
    manager, pki, tmp_path
):
    """Files replaced on disk: the next connection gets the new certificate."""
    live = Pem(tmp_path / "live.pem", tmp_path / "live.key")
    replace(live.cert, pki.server.cert)
    replace(live.key, pki.server.key)
    old_ca, new_ca = ClientTLS(str(pki.ca)), ClientTLS(str(pki.foreign_ca))
    async with tls_lake(manager, ServerTLS(str(live.cert), str(live.key))) as server:
        assert await get_health(server.address, old_ca) is True
        assert await refused(server.address, new_ca) == grpc.StatusCode.UNAVAILABLE
        replace(live.key, pki.foreign_server.key)
        replace(live.cert, pki.foreign_server.cert)
        assert await get_health(server.address, new_ca) is True
        assert await refused(server.address, old_ca) == grpc.StatusCode.UNAVAILABLE


async def lake(*args: str) -> tuple[int, str, str]:
    """Run the lake command with no LAKE_ variables; exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = await asyncio.create_subprocess_exec(
        *LAKE,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_lake_health_speaks_tls_with_the_ca_it_is_given(manager, pki):
    """lake health --ca reaches a TLS server; without --ca it gets no answer."""
    tls = ServerTLS(str(pki.server.cert), str(pki.server.key))
    async with tls_lake(manager, tls) as server:
        code, out, err = await lake(
            "health", "--address", server.address, "--ca", str(pki.ca)
        )
        assert code == 0, err
        assert "ready" in out
        code, _, err = await lake("health", "--address", server.address)
        assert code == 2
        assert "no answer" in err


async def test_lake_call_presents_its_client_certificate(manager, pki):
    """lake call with --ca/--cert/--key works against an mTLS server."""
    tls = ServerTLS(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    async with tls_lake(manager, tls) as server:
        common = ["--address", server.address, "--token", TOKEN, "--ca", str(pki.ca)]
        body = '{"collection": "docs", "dim": 2, "metric": "METRIC_L2"}'
        mtls = ["--cert", str(pki.client.cert), "--key", str(pki.client.key)]
        code, out, err = await lake(
            "call", "Vectors.CreateCollection", *common, *mtls, "-d", body
        )
        assert code == 0, err
        assert json.loads(out)["collection"] == "docs"
        code, _, err = await lake(
            "call", "Vectors.CreateCollection", *common, "-d", body
        )
        # The handshake fails: no connection, so no server answered (exit 2).
        assert code == 2
        assert "UNAVAILABLE" in err


async def test_lake_command_refuses_a_certificate_without_its_key(pki):
    """--cert without --key is a config error, before any connection."""
    code, _, err = await lake(
        "health", "--address", "127.0.0.1:1", "--ca", str(pki.ca), "--cert", "x.pem"
    )
    assert code == 1
    assert "config error" in err


@asynccontextmanager
async def tls_peer(tls: ServerTLS) -> AsyncIterator[PeerServer]:
    """A cortex peer serving TLS with ``tls``."""
    peer = PeerServer(CortexPeer(dim=8), credentials=server_credentials(tls))
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop(None)


async def test_mesh_reaches_a_tls_peer_and_refuses_the_wrong_ca(pki):
    """The mesh embeds through a TLS peer it trusts; plaintext or a wrong CA fail."""
    async with tls_peer(ServerTLS(str(pki.server.cert), str(pki.server.key))) as peer:
        peers = {"cortex": peer.address}
        async with open_mesh(peers=peers, tls={"ca_file": str(pki.ca)}) as mesh:
            await mesh.ping("cortex")
            assert [len(v) for v in await mesh.embed(["a", "b"])] == [8, 8]
        for tls in (None, {"ca_file": str(pki.foreign_ca)}):
            async with open_mesh(peers=peers, tls=tls) as mesh:
                with pytest.raises(MeshUnavailableError):
                    await mesh.ping("cortex")


async def test_mesh_presents_its_certificate_to_an_mtls_peer(pki, tmp_path):
    """An mTLS peer accepts the mesh's client certificate and refuses no cert."""
    ours = trustme.CA()
    named = issue(ours, tmp_path, "cortex", "cortex.internal")
    tls = ServerTLS(str(named.cert), str(named.key), str(pki.ca))
    ca = str(write_ca(ours, tmp_path / "peers-ca.pem"))
    client = {"cert_file": str(pki.client.cert), "key_file": str(pki.client.key)}
    async with tls_peer(tls) as peer:
        peers = {"cortex": peer.address}
        good = {"ca_file": ca, "server_name": "cortex.internal", **client}
        async with open_mesh(peers=peers, tls=good) as mesh:
            assert len(await mesh.embed(["x"])) == 1
        no_name = {"ca_file": ca, **client}
        no_cert = {"ca_file": ca, "server_name": "cortex.internal"}
        for bad in (no_name, no_cert):
            async with open_mesh(peers=peers, tls=bad) as mesh:
                with pytest.raises(MeshUnavailableError):
                    await mesh.ping("cortex")


async def test_lake_reports_a_tls_peer_up_from_its_settings(lake_settings, pki):
    """mesh.tls in the settings: Lake's health sees the TLS cortex peer UP."""
    async with tls_peer(ServerTLS(str(pki.server.cert), str(pki.server.key))) as peer:
        lake_settings["mesh"]["peers"] = {"cortex": peer.address}
        lake_settings["mesh"]["tls"]["ca_file"] = str(pki.ca)
        manager = await aresolve(create_container(lake_settings).manager)
        await manager.start()
        try:
            report = await manager.health()
        finally:
            await manager.stop()
    status = {c.name: c.status for c in report.components}
    assert status["mesh.cortex"] == Status.UP
