"""
A reflection-driven fuzzer against a real Lake: every method of every lake.v1 service,
streams included, with plausible and hostile values, and corrupt bodies to every
method the server has. No call may answer INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from lake.v1 import lake_pb2, tokens_pb2
from tests.api.conftest import auth
from tests.api.fuzzing import Generator

SEED = 20261127
PER_METHOD = 300
CORRUPT = 800
IN_FLIGHT = 32
# Every status a lake.v1 call may answer (README, "Status codes").
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,  # an admin method with a tenant's token
}
# Methods outside lake.v1, fed corrupt bodies only: (path, streams requests,
# streams responses).
OTHERS = [
    ("/grpc.health.v1.Health/Check", False, False),
    ("/grpc.health.v1.Health/Watch", False, True),
    ("/lake.v1.LakeHealth/GetHealth", False, False),
    ("/lake.v1.LakeHealth/GetStatus", False, False),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
]
ADMIN_PATHS = {"/lake.v1.LakeHealth/GetStatus"}
FIELD = re.compile(r"^([a-z_]+)[\[.:]")


@dataclass(frozen=True)
class Call:
    path: str
    client_streaming: bool
    server_streaming: bool
    payload: Any  # a message, bytes, or a list of either for a request stream
    request_fields: frozenset[str] = frozenset()


# Every lake.v1 service: the data API and the admin Tokens service.
SERVICES = {
    **lake_pb2.DESCRIPTOR.services_by_name,
    **tokens_pb2.DESCRIPTOR.services_by_name,
}


def lake_methods() -> list[MethodDescriptor]:
    return [method for service in SERVICES.values() for method in service.methods]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def generated(gen: Generator, service: str) -> list[Call]:
    """Seeded messages for each method of one lake.v1 service (streams: 1-4 each)."""
    calls = []
    for method in SERVICES[service].methods:
        cls = message_factory.GetMessageClass(method.input_type)
        fields = frozenset(f.name for f in method.input_type.fields)
        for _ in range(PER_METHOD):
            if method.client_streaming:
                n = gen.rng.randint(1, 4)
                payload: Any = [gen.message(method.input_type, cls) for _ in range(n)]
            else:
                payload = gen.message(method.input_type, cls)
            calls.append(
                Call(path_of(method), method.client_streaming, False, payload, fields)
            )
    return calls


def corrupt(gen: Generator) -> list[Call]:
    """Corrupt bodies for every method the server has, lake.v1 or not."""
    methods = lake_methods()
    targets = [(path_of(m), m.client_streaming, m.server_streaming) for m in methods]
    targets += OTHERS
    calls = []
    for i in range(CORRUPT):
        path, cstream, sstream = targets[i % len(targets)]
        good = gen.message(methods[0].input_type, lake_pb2.CreateCollectionRequest)
        body = gen.corrupt(good.SerializeToString())
        payload = [good.SerializeToString(), body] if cstream else body
        calls.append(Call(path, cstream, sstream, payload))
    return calls


# The fuzzer in parts, each its own test (and Lake), so each stays far inside the
# per-test timeout on a loaded machine; each part has its own seed.
PARTS = [*SERVICES, "corrupt"]


def plan(part: str) -> list[Call]:
    gen = Generator(SEED + PARTS.index(part))
    return corrupt(gen) if part == "corrupt" else generated(gen, part)


def _serialize(item: Any) -> bytes:
    return item if isinstance(item, bytes) else item.SerializeToString()


async def invoke(channel: grpc.aio.Channel, call: Call) -> tuple[grpc.StatusCode, str]:
    """One call with bytes on the wire both ways; its status and details."""
    # Admin methods get the admin token, so their bodies are what is tested.
    admin = call.path in ADMIN_PATHS or call.path.startswith("/lake.v1.Tokens/")
    token = "token-admin" if admin else "token-a"
    md, ser, timeout = auth(token), _serialize, 30.0
    try:
        if call.client_streaming and call.server_streaming:
            both = channel.stream_stream(call.path, ser, None)
            async for _ in both(iter(call.payload), metadata=md, timeout=timeout):
                pass
        elif call.client_streaming:
            up = channel.stream_unary(call.path, ser, None)
            await up(iter(call.payload), metadata=md, timeout=timeout)
        elif call.server_streaming:
            down = channel.unary_stream(call.path, ser, None)
            async for _ in down(call.payload, metadata=md, timeout=timeout):
                break  # Watch streams forever once it answers
        else:
            one = channel.unary_unary(call.path, ser, None)
            await one(call.payload, metadata=md, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


STREAM_MESSAGE = re.compile(r"^messages\[\d+\]\.")


def problem(call: Call, code: grpc.StatusCode, details: str) -> str | None:
    """Why this answer breaks the contract, or None."""
    if code not in DOCUMENTED:
        return f"undocumented status {code.name}"
    if code is grpc.StatusCode.INVALID_ARGUMENT and call.request_fields:
        if call.client_streaming:  # a stream's errors name the message first
            details = STREAM_MESSAGE.sub("", details, count=1)
        named = FIELD.match(details)
        known = {*call.request_fields, "request", "tenant"}
        if call.client_streaming:
            known.add("messages")  # the stream as a whole (its point cap)
        if named is None or named[1] not in known:
            return "message does not name a request field"
    if "Error" in details or "class" in details or "Traceback" in details:
        return "exception text reached the client"
    return None


def shown(item: Any) -> str:
    """A message or body in one short line (deep messages as their bytes)."""
    if isinstance(item, bytes):
        return repr(item[:60])
    try:
        return text_format.MessageToString(item, as_one_line=True)[:300]
    except DecodeError:  # nested past text_format's depth limit
        return repr(item.SerializeToString()[:60])


def describe(call: Call, code: grpc.StatusCode, details: str, why: str) -> str:
    items = call.payload if isinstance(call.payload, list) else [call.payload]
    body = " | ".join(shown(x) for x in items)[:400]
    return f"{call.path} -> {code.name} {details[:200]!r} ({why}): {body}"


async def seed_data(api) -> None:
    """Collections the plausible requests name, so most calls reach the stores."""
    for name, dim in (("fz", 3), ("notes", 16)):
        await api.vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection=name, dim=dim, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )


def test_the_fuzzer_makes_over_5000_calls_to_every_method():
    """The parts together: at least 5,000 calls, every lake.v1 method generated."""
    calls = [c for part in PARTS for c in plan(part)]
    assert len(calls) >= 5000
    assert {path_of(m) for m in lake_methods()} <= {c.path for c in calls}
    assert {path for path, *_ in OTHERS} <= {c.path for c in calls}


@pytest.mark.parametrize("part", PARTS)
async def test_fuzzer_finds_no_internal_or_unknown(api, part):
    """Seeded calls, plausible and hostile, answer only documented codes."""
    await seed_data(api)
    calls = plan(part)
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def run(call: Call) -> tuple[Call, grpc.StatusCode, str]:
        async with limit:
            code, details = await invoke(api.channel, call)
        return call, code, details

    results = await asyncio.gather(*(run(c) for c in calls))
    failures: dict[tuple[str, str, str], str] = {}  # one example per kind
    seen: Counter[tuple[str, str]] = Counter()
    for call, code, details in results:
        seen[call.path, code.name] += 1
        why = problem(call, code, details)
        if why is not None:
            kind = (
                call.path,
                code.name,
                re.sub(r"[0-9a-f]{12}|\d+", "N", details)[:40],
            )
            failures.setdefault(kind, describe(call, code, details, why))
    report = "\n".join(list(failures.values())[:20])
    assert not failures, f"{len(failures)} kinds of bad answer:\n{report}"
    if part == "corrupt":
        for path in {c.path for c in calls}:
            assert seen[path, "INVALID_ARGUMENT"] > 0, (path, seen)
        return
    if part not in lake_pb2.DESCRIPTOR.services_by_name:
        return  # Tokens: random ids and tenants are mostly refused, as they should be
    # The plausible share reached the stores: every method succeeded sometimes.
    for method in lake_pb2.DESCRIPTOR.services_by_name[part].methods:
        path = path_of(method)
        answers = {code: n for (p, code), n in seen.items() if p == path}
        assert seen[path, "OK"] > 0, f"{path} never succeeded: {answers}"
