"""
Tokens operators manage, over real servers: two Lake instances on one database see
each other's tokens and revocations within seconds; scopes per RPC; failed
authentication logged and limited per peer; GetStatus for admins; reflection v1 and
v1alpha.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import structlog
from google.protobuf import descriptor_pb2, duration_pb2
from grpc_reflection.v1alpha import reflection_pb2

from lake.v1 import (
    health_pb2,
    health_pb2_grpc,
    lake_pb2,
    lake_pb2_grpc,
    tokens_pb2_grpc,
)
from lake.v1 import tokens_pb2 as tk
from tests.api.conftest import auth, running_lake
from tests.waiting import eventually

NEAREST = lake_pb2.NearestRequest(lon=0, lat=0)
UPSERT = lake_pb2.UpsertFeaturesRequest(
    features=[lake_pb2.Feature(id="f", lon=0, lat=0)]
)
ADMIN = auth("token-admin")


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class Lake:
    def __init__(self, server: Any, manager: Any, channel: grpc.aio.Channel) -> None:
        self.server, self.manager, self.channel = server, manager, channel
        self.tokens = tokens_pb2_grpc.TokensStub(channel)
        self.spatial = lake_pb2_grpc.SpatialStub(channel)
        self.health = health_pb2_grpc.LakeHealthStub(channel)

    async def nearest(self, token: str) -> grpc.StatusCode:
        return await code_of(self.spatial.Nearest(NEAREST, metadata=auth(token)))


@pytest.fixture
async def lakes(lake_settings) -> AsyncIterator[tuple[Lake, Lake]]:
    """Two Lake instances on one database, re-reading tokens at the shipped
    auth.refresh_s (2 s). Polling a token not yet known fails many times from one
    peer: the failure limit (tested on its own) is raised out of the way."""
    options = {
        "token_refresh": lake_settings["auth"]["refresh_s"],
        "max_auth_failures": 10_000,
    }
    async with AsyncExitStack() as stack:
        pair = [
            Lake(
                *await stack.enter_async_context(running_lake(lake_settings, **options))
            )
            for _ in range(2)
        ]
        yield pair[0], pair[1]


@pytest.fixture
async def lake(lake_settings) -> AsyncIterator[Lake]:
    """One Lake instance with the test tokens."""
    async with running_lake(lake_settings) as parts:
        yield Lake(*parts)


async def create(lake: Lake, scope: Any, tenant: str = "tenant-c", **extra: Any):
    return await lake.tokens.Create(
        tk.CreateTokenRequest(tenant=tenant, scope=scope, **extra), metadata=ADMIN
    )


async def test_created_token_works_on_every_instance_and_revocation_reaches_all(lakes):
    """A token made on A authenticates on B within 5 s; revoked on A, both refuse
    it within 5 s."""
    a, b = lakes
    made = await create(a, tk.TOKEN_SCOPE_WRITE)
    assert made.token.startswith("lake_")
    assert made.info.id.startswith("tok_")
    assert await a.nearest(made.token) == grpc.StatusCode.OK  # A re-read at once

    async def works_on_b() -> bool:
        return bool(await b.nearest(made.token) == grpc.StatusCode.OK)

    await eventually(works_on_b, within=5.0, every=0.05)
    assert await code_of(b.spatial.Upsert(UPSERT, metadata=auth(made.token))) == (
        grpc.StatusCode.OK
    )

    await a.tokens.Revoke(tk.RevokeTokenRequest(id=made.info.id), metadata=ADMIN)
    refused = grpc.StatusCode.UNAUTHENTICATED
    assert await a.nearest(made.token) == refused

    async def refused_on_b() -> bool:
        return bool(await b.nearest(made.token) == refused)

    with structlog.testing.capture_logs() as logs:
        await eventually(refused_on_b, within=5.0, every=0.05)
    reasons = {e["reason"] for e in logs if e["event"] == "auth_failed"}
    assert reasons == {"revoked"}


async def test_read_token_cannot_write(lake):
    """A read-scoped token reads, and gets PERMISSION_DENIED on every write."""
    a = lake
    made = await create(a, tk.TOKEN_SCOPE_READ)
    assert await a.nearest(made.token) == grpc.StatusCode.OK
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(a.spatial.Upsert(UPSERT, metadata=auth(made.token))) == denied
    series = lake_pb2_grpc.TimeSeriesStub(a.channel)
    write = series.WriteStream(
        iter([lake_pb2.WritePointsRequest(metric="m")]), metadata=auth(made.token)
    )
    assert await code_of(write) == denied
    vectors = lake_pb2_grpc.VectorsStub(a.channel)
    make = vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(collection="c", dim=2),
        metadata=auth(made.token),
    )
    assert await code_of(make) == denied


async def test_expired_token_is_refused(lake):
    """A token past its expiry is refused at once, and the log says expired."""
    a = lake
    store = a.server.keyring.store
    assert store is not None
    token = "an-expired-token"
    from lake.tokens import Scope, hash_token

    await store.create(
        tenant="tenant-c",
        scope=Scope.READ,
        token_hash=hash_token(token),
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    await a.server.keyring.refresh()
    with structlog.testing.capture_logs() as logs:
        assert await a.nearest(token) == grpc.StatusCode.UNAUTHENTICATED
    failed = [e for e in logs if e["event"] == "auth_failed"]
    assert [e["reason"] for e in failed] == ["expired"]
    short = await create(
        a, tk.TOKEN_SCOPE_READ, expires_in=duration_pb2.Duration(seconds=3600)
    )
    assert await a.nearest(short.token) == grpc.StatusCode.OK
    assert short.info.HasField("expires_at")


async def test_only_admins_manage_tokens(lake):
    """Admin creates for any tenant and lists (no tokens, short hash prefixes); a
    write token may not manage tokens; no token is unauthenticated."""
    a = lake
    made = await create(a, tk.TOKEN_SCOPE_READ, tenant="other", note="for ci")
    listed = await a.tokens.List(tk.ListTokensRequest(), metadata=ADMIN)
    [info] = [t for t in listed.tokens if t.id == made.info.id]
    assert (info.tenant, info.note, len(info.hash_prefix)) == ("other", "for ci", 8)
    assert made.token not in str(listed)
    mine = await a.tokens.List(tk.ListTokensRequest(tenant="nobody"), metadata=ADMIN)
    assert list(mine.tokens) == []
    request = tk.CreateTokenRequest(tenant="tenant-a", scope=tk.TOKEN_SCOPE_ADMIN)
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(a.tokens.Create(request, metadata=auth("token-a"))) == denied
    assert await code_of(a.tokens.List(tk.ListTokensRequest())) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    bad = tk.CreateTokenRequest(tenant="Bad Tenant")
    assert await code_of(a.tokens.Create(bad, metadata=ADMIN)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    unknown = tk.RevokeTokenRequest(id="tok_nope")
    assert await code_of(a.tokens.Revoke(unknown, metadata=ADMIN)) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_failed_authentication_is_logged_with_the_peer_never_the_token(lake):
    """auth_failed names the peer and the reason, and no log line holds the token."""
    a = lake
    secret = "lake_this-is-a-guessed-secret"
    with structlog.testing.capture_logs() as logs:
        assert await a.nearest(secret) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(a.spatial.Nearest(NEAREST)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert await code_of(a.spatial.Upsert(UPSERT, metadata=auth("token-a"))) == (
            grpc.StatusCode.OK
        )
        made = await create(a, tk.TOKEN_SCOPE_READ)
        await code_of(a.spatial.Upsert(UPSERT, metadata=auth(made.token)))
    failed = [e for e in logs if e["event"] == "auth_failed"]
    assert [e["reason"] for e in failed] == ["unknown", "missing", "wrong_scope"]
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in failed)
    assert failed[2]["id"] == made.info.id
    assert secret not in repr(logs)
    assert made.token not in repr(logs)


async def test_a_peer_with_too_many_failures_is_refused_unchecked(lake_settings):
    """After max_auth_failures bad tokens a peer's further failures are refused
    unchecked and unlogged (the limit is logged once with the count), while a
    valid token from the same address still passes: one bad client behind a
    shared address (a TLS proxy) cannot lock every other client out."""
    async with running_lake(lake_settings, max_auth_failures=3) as parts:
        lake = Lake(*parts)
        with structlog.testing.capture_logs() as logs:
            for i in range(3):
                assert await lake.nearest(f"bad-{i}") == grpc.StatusCode.UNAUTHENTICATED
            for i in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await lake.spatial.Nearest(NEAREST, metadata=auth(f"worse-{i}"))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert info.value.details() == "too many failures"
            assert await lake.nearest("token-a") == grpc.StatusCode.OK
        limited = [e for e in logs if e["event"] == "auth_rate_limited"]
        assert len(limited) == 1
        assert limited[0]["failures"] == 3
        failed = [e for e in logs if e["event"] == "auth_failed"]
        assert len(failed) == 2  # the third failure is the one logged as the limit
        # Health stays open to the same peer.
        reply = await lake.health.GetHealth(health_pb2.GetHealthRequest())
        assert reply.state == "running"


async def test_get_status_needs_an_admin_and_names_no_exception_class(lake):
    """GetStatus: no token UNAUTHENTICATED, a write token PERMISSION_DENIED, an
    admin token the figures, with failures counted by kind."""
    a = lake
    vectors = lake_pb2_grpc.VectorsStub(a.channel)
    missing = vectors.Search(
        lake_pb2.SearchVectorsRequest(collection="nope", vector=[1.0]),
        metadata=auth(),
    )
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND
    request = health_pb2.GetStatusRequest()
    assert await code_of(a.health.GetStatus(request)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(a.health.GetStatus(request, metadata=auth())) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    reply = await a.health.GetStatus(request, metadata=ADMIN)
    status = dict(reply.status)
    assert status["state"] == "running"
    failures = dict(status["operations"]["SearchVectors"]["failures"])
    assert failures == {"not_found": 1.0}
    assert "Error" not in str(reply)
    assert (await a.health.GetHealth(health_pb2.GetHealthRequest())).state == "running"


async def reflect(channel: grpc.aio.Channel, service: str, request: Any) -> Any:
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [reply async for reply in call(iter([request]))]


@pytest.mark.parametrize(
    "service",
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"],
)
async def test_reflection_v1_and_v1alpha_list_and_describe(lake, service):
    """Both reflection versions list every service (no token) and describe v1."""
    a = lake
    [reply] = await reflect(
        a.channel, service, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "lake.v1.Vectors",
        "lake.v1.TimeSeries",
        "lake.v1.Spatial",
        "lake.v1.LakeHealth",
        "lake.v1.Tokens",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    [described] = await reflect(
        a.channel,
        service,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    )
    assert not described.HasField("error_response")
    files = described.file_descriptor_response.file_descriptor_proto
    parsed = [descriptor_pb2.FileDescriptorProto.FromString(f) for f in files]
    assert "grpc.reflection.v1" in {f.package for f in parsed}


async def test_lake_app_cannot_read_the_token_table(lake, lake_settings):
    """Tenant transactions run as lake_app, which has no access to lake_tokens."""
    a = lake
    await create(a, tk.TOKEN_SCOPE_READ)
    pg = lake_settings["postgres"]
    conn = await asyncpg.connect(pg["dsn"], password=pg["password"] or None)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE lake_app")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT token_hash FROM lake_tokens")
        assert await conn.fetchval("SELECT count(*) FROM lake_tokens") == 1
    finally:
        await conn.close()
