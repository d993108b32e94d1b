"""
The auth interceptor on its own: every handler kind is checked, the scope table
covers every Lake method, the keyring and the per-peer failure limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import structlog

from lake.api.auth import (
    METHOD_SCOPES,
    OPEN_METHODS,
    AuthInterceptor,
    FailureLimiter,
    Keyring,
    current_principal,
)
from lake.config import load_settings
from lake.errors import ConfigError, StoreUnavailableError
from lake.tokens import Scope, TokenRecord, hash_token, parse_duration
from lake.v1 import health_pb2, lake_pb2, tokens_pb2

SETTINGS = {
    hash_token("writer"): "acme",
    hash_token("root"): {"tenant": "ops", "scope": "admin"},
}


def _echo(data: bytes) -> bytes:
    return data


async def _watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield current_principal().tenant.encode()


async def _chat(requests: Any, context: Any) -> None:
    async for request in requests:
        await context.write(request + b"!")


@pytest.fixture
async def probe() -> AsyncIterator[grpc.aio.Channel]:
    """A bare server with the interceptor and test-only streaming Lake methods."""
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(Keyring(SETTINGS), max_deadline=5.0)]
    )
    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(
            _watch, request_deserializer=_echo, response_serializer=_echo
        ),
        "Chat": grpc.stream_stream_rpc_method_handler(
            _chat, request_deserializer=_echo, response_serializer=_echo
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("lake.v1.Probe", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close(None)
    await server.stop(None)


async def _collect(call: Any) -> tuple[grpc.StatusCode, list[bytes]]:
    try:
        return grpc.StatusCode.OK, [r async for r in call]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), []


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_server_streaming_and_bidi_lake_methods_are_checked(probe):
    """Unary-stream and stream-stream Lake methods refuse a missing token, need
    admin when unlisted, and serve an admin with its tenant."""
    watch = probe.unary_stream("/lake.v1.Probe/Watch")
    chat = probe.stream_stream("/lake.v1.Probe/Chat")
    assert await _collect(watch(b"")) == (grpc.StatusCode.UNAUTHENTICATED, [])
    assert await _collect(chat(iter([b"hi"]))) == (grpc.StatusCode.UNAUTHENTICATED, [])
    writer = _bearer("writer")
    assert await _collect(watch(b"", metadata=writer)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        [],
    )
    assert await _collect(chat(iter([b"hi"]), metadata=writer)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        [],
    )
    root = _bearer("root")
    assert await _collect(watch(b"", metadata=root)) == (
        grpc.StatusCode.OK,
        [b"ops", b"ops"],
    )
    assert await _collect(chat(iter([b"a", b"b"]), metadata=root)) == (
        grpc.StatusCode.OK,
        [b"a!", b"b!"],
    )


def test_every_lake_method_has_a_scope_or_is_open():
    """The scope table names every lake.v1 RPC; only GetHealth is open."""
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (lake_pb2, health_pb2, tokens_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods - set(METHOD_SCOPES) == set(OPEN_METHODS)
    assert METHOD_SCOPES["/lake.v1.Vectors/Search"] is Scope.READ
    assert METHOD_SCOPES["/lake.v1.TimeSeries/WriteStream"] is Scope.WRITE
    assert METHOD_SCOPES["/lake.v1.LakeHealth/GetStatus"] is Scope.ADMIN


class FlakyStore:
    def __init__(self, records: list[TokenRecord]) -> None:
        self.records = records
        self.down = False

    async def snapshot(self) -> list[TokenRecord]:
        if self.down:
            msg = "database is unavailable"
            raise StoreUnavailableError(msg)
        return list(self.records)


def record(token: str, **extra: Any) -> TokenRecord:
    return TokenRecord(
        id="tok_1",
        tenant="acme",
        scope=Scope.READ,
        token_hash=hash_token(token),
        created_at=datetime.now(UTC),
        **extra,
    )


async def test_keyring_keeps_the_last_tokens_while_the_store_is_down():
    """A failed refresh keeps the known tokens (logged once); a revocation read
    later empties the cache, so the token is refused with its reason."""
    store = FlakyStore([record("t1")])
    keyring = Keyring(SETTINGS)
    keyring.store = store  # type: ignore[assignment]
    assert await keyring.refresh()
    assert keyring.lookup("t1") == keyring.lookup("t1")  # cached the second time
    store.down = True
    with structlog.testing.capture_logs() as logs:
        assert not await keyring.refresh()
        assert not await keyring.refresh()
    assert [e["event"] for e in logs] == ["token_refresh_failed"]
    assert getattr(keyring.lookup("t1"), "tenant", None) == "acme"
    store.down = False
    store.records = [record("t1", revoked_at=datetime.now(UTC))]
    assert await keyring.refresh()
    assert keyring.lookup("t1") == "revoked"
    assert keyring.lookup("never-issued") == "unknown"
    root = keyring.lookup("root")
    assert (getattr(root, "scope", None), getattr(root, "tenant", None)) == (
        Scope.ADMIN,
        "ops",
    )
    assert getattr(keyring.lookup("writer"), "scope", None) is Scope.WRITE


def test_failure_limit_is_per_peer_host_and_per_window():
    """Failures count per host (any port); the block lifts when the window ends."""
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window_s=60.0, clock=lambda: now[0])
    limiter.failed("ipv4:10.0.0.1:1000")
    assert not limiter.blocked("ipv4:10.0.0.1:2000")
    limiter.failed("ipv4:10.0.0.1:3000")
    assert limiter.blocked("ipv4:10.0.0.1:4000")
    assert not limiter.blocked("ipv4:10.0.0.2:1000")
    assert not limiter.blocked("ipv6:[::1]:1000")
    now[0] = 60.0
    assert not limiter.blocked("ipv4:10.0.0.1:5000")


def test_durations_parse_and_bad_ones_are_refused():
    """30d, 12h, 90m and 45s parse; zero, negative or unitless ones are refused."""
    assert parse_duration("30d").total_seconds() == 30 * 86400
    assert parse_duration("12h").total_seconds() == 12 * 3600
    assert parse_duration("90m").total_seconds() == 90 * 60
    assert parse_duration("45s").total_seconds() == 45
    for bad in ("0d", "-1d", "30", "d", "3y"):
        with pytest.raises(ValueError, match="expires"):
            parse_duration(bad)


def test_settings_tokens_accept_both_forms_and_refuse_bad_entries(monkeypatch):
    """A tenant string or {tenant, scope} loads; a bad hash, tenant or scope fails
    start-up naming auth.tokens."""
    digest = hash_token("x")
    monkeypatch.setenv(
        "LAKE_AUTH__TOKENS",
        f'{{ "{digest}" = {{ tenant = "ops", scope = "admin" }}, "{"a" * 64}" = "t" }}',
    )
    tokens = load_settings("testing")["auth"]["tokens"]
    assert tokens[digest] == {"tenant": "ops", "scope": "admin"}
    for bad in (
        '{ "abc" = "t" }',
        f'{{ "{digest}" = "Bad Tenant" }}',
        f'{{ "{digest}" = {{ tenant = "t", scope = "root" }} }}',
    ):
        monkeypatch.setenv("LAKE_AUTH__TOKENS", bad)
        with pytest.raises(ConfigError, match=r"auth\.tokens"):
            load_settings("testing")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code


class AbortingContext:
    """The three ServicerContext methods authorization uses."""

    def __init__(self, token: str) -> None:
        self._token = token

    def invocation_metadata(self):
        return (("authorization", f"Bearer {self._token}"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def test_an_unknown_token_before_the_table_is_read_is_starting():
    """While the token table has not been read (start-up), an unknown token is
    UNAVAILABLE (retryable) and not counted as a failure; afterwards it is
    UNAUTHENTICATED."""
    keyring = Keyring({}, expect_table=True)
    limiter = FailureLimiter(max_failures=1)
    interceptor = AuthInterceptor(keyring, max_deadline=5.0, limiter=limiter)
    context: Any = AbortingContext(token="not-yet-known")
    with pytest.raises(Aborted) as info:
        await interceptor._authorize(context, Scope.READ)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert not limiter.blocked(context.peer())
    keyring.pending = False  # the table has been read
    with pytest.raises(Aborted) as info:
        await interceptor._authorize(context, Scope.READ)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
