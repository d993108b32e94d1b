"""
lake.client against tiny grpc.aio servers on loopback: the documented retry policy
(UNAVAILABLE retried, four attempts at most, pushback obeyed, nothing else
retried), statuses mapped back to Lake's exceptions, round robin over an address
list, and an import that needs no server dependency.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from lake.api.quota_status import quota_status
from lake.client import (
    RETRY_SERVICE_CONFIG,
    Client,
    LakeClient,
    channel_options,
    service_config_json,
)
from lake.client.channel import target_of
from lake.errors import (
    AbortedError,
    CircuitOpenError,
    ClientError,
    ConfigError,
    ConflictError,
    DeadlineExceededError,
    LakeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedError,
    ValidationError,
)
from lake.v1 import health_pb2, health_pb2_grpc, lake_pb2, lake_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class Script:
    """
    What the fake answers: ``failures`` UNAVAILABLE answers first (with
    ``pushback_ms`` and ``message``), then a health reply; every attempt counted.
    """

    failures: int = 0
    message: str = "starting: retry shortly"
    pushback_ms: int | None = None
    attempts: int = 0
    tokens: list[str] = field(default_factory=list)


class FakeHealth(health_pb2_grpc.LakeHealthServicer):
    def __init__(self, script: Script, name: str = "lake") -> None:
        self.script = script
        self.name = name

    async def GetHealth(
        self, request: Any, context: Context
    ) -> health_pb2.GetHealthResponse:
        self.script.attempts += 1
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                self.script.tokens.append(str(value))
        if self.script.attempts <= self.script.failures:
            trailing: tuple[tuple[str, str], ...] = ()
            if self.script.pushback_ms is not None:
                trailing = (("grpc-retry-pushback-ms", str(self.script.pushback_ms)),)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                self.script.message,
                trailing_metadata=trailing,
            )
        return health_pb2.GetHealthResponse(
            status=health_pb2.STATUS_UP, ready=True, live=True, state=self.name
        )


class FakeVectors(lake_pb2_grpc.VectorsServicer):
    """
    Search answers the status named by the collection, with ``vector[0]`` as
    nothing; the message is the request's ``where.message``.
    """

    attempts = 0

    async def Search(
        self, request: Any, context: Context
    ) -> lake_pb2.SearchVectorsResponse:
        FakeVectors.attempts += 1
        message = request.where.fields["message"].string_value
        if request.collection == "QUOTA":
            from lake.errors import QuotaExceededError as Refused

            status = quota_status(Refused("read_per_s", "acme", 1.5))
            await context.abort(status.code, status.details, status.trailing_metadata)
        await context.abort(grpc.StatusCode[request.collection], message)
        raise AssertionError  # abort raises


@asynccontextmanager
async def fake_server(
    script: Script | None = None, name: str = "lake"
) -> AsyncIterator[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_LakeHealthServicer_to_server(
        FakeHealth(script or Script(), name),  # type: ignore[abstract]
        server,
    )
    vectors = FakeVectors()  # type: ignore[abstract]  # Search only
    lake_pb2_grpc.add_VectorsServicer_to_server(vectors, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_unavailable_once_is_retried_and_the_call_succeeds():
    """One UNAVAILABLE, then an answer: the caller sees only the answer."""
    script = Script(failures=1)
    async with fake_server(script) as address, LakeClient(address) as lake:
        report = await lake.health()
    assert report.ready is True
    assert script.attempts == 2


async def test_retries_stop_at_four_attempts():
    """A server that always answers UNAVAILABLE is asked four times, no more."""
    script = Script(failures=100)
    async with fake_server(script) as address, LakeClient(address) as lake:
        with pytest.raises(UnavailableError) as info:
            await lake.health()
    assert script.attempts == 4
    assert str(info.value) == "starting: retry shortly"


async def test_an_open_breaker_is_a_circuit_open_error_with_its_pushback():
    """UNAVAILABLE from an open breaker: retried after the server's pushback, then
    CircuitOpenError naming the dependency and when to come back."""
    script = Script(
        failures=100, message="postgres is unavailable (circuit open)", pushback_ms=20
    )
    async with fake_server(script) as address, LakeClient(address) as lake:
        with pytest.raises(CircuitOpenError) as info:
            await lake.health()
    assert script.attempts == 4
    assert info.value.dependency == "postgres"
    assert info.value.retry_after_s == pytest.approx(0.02)


async def test_other_statuses_are_not_retried():
    """RESOURCE_EXHAUSTED, ABORTED, INTERNAL...: one attempt each."""
    async with fake_server() as address, LakeClient(address) as lake:
        for code in ("RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "NOT_FOUND"):
            FakeVectors.attempts = 0
            with pytest.raises(LakeError):
                await lake.search(code, [1.0])
            assert FakeVectors.attempts == 1, code


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        ("INVALID_ARGUMENT", "items[3].values: must be finite", ValidationError),
        ("NOT_FOUND", "collection docs not found", NotFoundError),
        ("ALREADY_EXISTS", "collection docs has dim 2", ConflictError),
        ("FAILED_PRECONDITION", "no peer cortex configured", UnsupportedError),
        ("DEADLINE_EXCEEDED", "deadline exceeded", DeadlineExceededError),
        ("RESOURCE_EXHAUSTED", "no database connection free", ResourceExhaustedError),
        ("ABORTED", "lock wait ended", AbortedError),
        ("UNAUTHENTICATED", "unknown token", UnauthenticatedError),
        ("PERMISSION_DENIED", "scope read cannot call Upsert", PermissionDeniedError),
        ("INTERNAL", "internal error (error id abc)", ClientError),
    ],
)
async def test_each_status_maps_to_its_lake_error(code, message, kind):
    """Every status Lake sends comes back as the class Lake raised it as, with the
    server's message, the status name and details kept."""
    from lake.client import status_details, status_name

    async with fake_server() as address, LakeClient(address) as lake:
        with pytest.raises(kind) as info:
            await lake.search(code, [1.0], where={"message": message})
    assert type(info.value) is kind
    assert str(info.value) == message
    assert status_name(info.value) == code
    assert status_details(info.value) == message


async def test_a_validation_error_names_the_field():
    async with fake_server() as address, LakeClient(address) as lake:
        with pytest.raises(ValidationError) as info:
            await lake.search(
                "INVALID_ARGUMENT", [1.0], where={"message": "k: must be at most 1000"}
            )
    assert (info.value.field, info.value.problem) == ("k", "must be at most 1000")


async def test_a_refused_quota_is_quota_exceeded_with_its_details():
    """QuotaFailure and RetryInfo from the rich status: quota, tenant, retry."""
    async with fake_server() as address, LakeClient(address) as lake:
        with pytest.raises(QuotaExceededError) as info:
            await lake.search("QUOTA", [1.0])
    error = info.value
    assert (error.quota, error.tenant, error.retry_after) == ("read_per_s", "acme", 1.5)
    assert str(error) == "quota read_per_s exceeded for tenant acme"


async def test_a_deadline_bounds_the_call_and_its_retries():
    """The per-call timeout overrides the client's; running out is
    DeadlineExceededError, not a hang."""
    script = Script(failures=100, pushback_ms=60_000)
    async with fake_server(script) as address, LakeClient(address, timeout=30) as lake:
        with pytest.raises(DeadlineExceededError):
            await lake.health(timeout=0.5)
    assert script.attempts == 1  # the pushback outlasted the deadline


async def test_the_token_travels_as_a_bearer_header():
    script = Script()
    async with fake_server(script) as address:
        async with LakeClient(address, token="t0k") as lake:
            await lake.health()
        async with LakeClient(address) as lake:
            await lake.health()
    assert script.tokens == ["Bearer t0k"]


async def test_round_robin_spreads_calls_over_an_address_list():
    """Two instances in an ipv4: list both get calls."""
    one, two = Script(), Script()
    async with (
        fake_server(one, "one") as a,
        fake_server(two, "two") as b,
        LakeClient([a, b]) as lake,
    ):
        seen = {(await lake.health()).state for _ in range(20)}
    assert seen == {"one", "two"}


async def test_a_dns_target_is_resolved_and_balanced():
    """A dns:/// name reaches the server it resolves to, with the policy on."""
    script = Script(failures=1)
    async with fake_server(script) as address:
        port = address.rsplit(":", 1)[1]
        async with LakeClient(f"dns:///127.0.0.1:{port}") as lake:
            assert (await lake.health()).ready is True
    assert script.attempts == 2


async def test_the_sync_client_works_from_a_plain_thread():
    """Client needs no event loop: a worker thread calls it, retries included."""
    script = Script(failures=1)
    async with fake_server(script) as address:

        def ask() -> bool:
            with Client(address, token="t") as lake:
                return lake.health().ready

        assert await asyncio.to_thread(ask) is True
    assert script.attempts == 2


async def test_the_sync_client_maps_errors_too():
    async with fake_server() as address:

        def ask() -> None:
            with Client(address) as lake:
                lake.search("NOT_FOUND", [1.0], where={"message": "gone"})

        with pytest.raises(NotFoundError, match="gone"):
            await asyncio.to_thread(ask)


def test_the_policy_is_the_documented_one():
    """One constant: four attempts, 0.1 s doubling to 2 s, UNAVAILABLE only."""
    assert RETRY_SERVICE_CONFIG == {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    options = dict(channel_options(round_robin=True))
    assert options["grpc.enable_retries"] == 1
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert (
        json.loads(service_config_json())["methodConfig"]
        == (RETRY_SERVICE_CONFIG["methodConfig"])
    )


def test_targets():
    assert target_of("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert target_of(["10.0.0.1:1", "10.0.0.2:1"]) == (
        "ipv4:10.0.0.1:1,10.0.0.2:1",
        True,
    )
    assert target_of("dns:///lake:50051") == ("dns:///lake:50051", True)
    with pytest.raises(ConfigError):
        target_of(["lake-0:1", "lake-1:1"])


# Every server dependency; lake.client must import with all of them missing.
BLOCKED = (
    "asyncpg",
    "redis",
    "dynaconf",
    "structlog",
    "dependency_injector",
    "stamina",
    "click",
    "limits",
    "prometheus_client",
    "pgvector",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "google.rpc",
)

_PROBE = """
import sys
BLOCKED = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
import lake.client
from lake.client import Client, LakeClient
Client("127.0.0.1:1").close()
servers = [m for m in sys.modules if m.startswith("lake.") and not (
    m.startswith(("lake.client", "lake.v1")) or m in ("lake.errors", "lake.models"))]
print(",".join(servers))
"""


def test_importing_the_client_needs_no_server_dependency():
    """In a fresh interpreter where asyncpg, redis, dynaconf, structlog,
    dependency_injector... raise ImportError, lake.client imports and builds a
    client, pulling in no other Lake module."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(blocked=BLOCKED)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_readme_documents_the_policy_in_use():
    """The README's service config is the one lake.client sends."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("**The retry policy**", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == RETRY_SERVICE_CONFIG
