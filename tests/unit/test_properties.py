"""
Property tests: every lake.v1 servicer method, driven with generated requests over a
manager of fakes, answers only documented codes (never INTERNAL or UNKNOWN).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.api.auth import _PRINCIPAL, Principal
from lake.api.servicer import SpatialServicer, TimeSeriesServicer, VectorsServicer
from lake.manager import ServiceManager
from lake.models import Collection, VectorMatch
from lake.operations import Limits
from lake.resilience import RetryPolicy
from lake.tokens import Scope
from tests.fakes import FakeResourceSet, Fakes, FakeVectorStore
from tests.strategies import lake_methods, requests_for

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
PROPERTY = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """The one ServicerContext method the servicers use."""

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        raise Aborted(code, details)


class TolerantVectorStore(FakeVectorStore):
    """The fake store, with a zero vector's cosine distance NaN as pgvector has it."""

    async def search(
        self, tenant, collection, vector, k, **kwargs
    ) -> list[VectorMatch]:
        if not any(vector) or not all(math.isfinite(x) for x in vector):
            return []
        return await super().search(tenant, collection, vector, k, **kwargs)


@pytest.fixture
async def servicers() -> AsyncIterator[dict[str, Any]]:
    fakes = Fakes(vectors=TolerantVectorStore())
    fakes.vectors.collections[("t1", "docs")] = Collection("docs", 3)
    manager = ServiceManager(
        FakeResourceSet(fakes.components()),
        limits=Limits(),
        startup=RetryPolicy(attempts=1, timeout=5.0),
        operations=RetryPolicy(attempts=1, timeout=5.0),
        check_timeout=0.2,
    )
    await manager.start()
    token = _PRINCIPAL.set(Principal("t1", Scope.WRITE))
    yield {
        "Vectors": VectorsServicer(manager),
        "TimeSeries": TimeSeriesServicer(manager),
        "Spatial": SpatialServicer(manager),
    }
    _PRINCIPAL.reset(token)
    await manager.stop()


async def _stream(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


@pytest.mark.parametrize(
    "method", lake_methods(), ids=lambda m: f"{m.containing_service.name}.{m.name}"
)
@PROPERTY
@given(data=st.data())
async def test_every_method_answers_only_documented_codes(servicers, method, data):
    """Generated requests: a response or a documented status, never INTERNAL."""
    request = data.draw(requests_for(method))
    handler = getattr(servicers[method.containing_service.name], method.name)
    payload = _stream(request) if method.client_streaming else request
    code, details = grpc.StatusCode.OK, ""
    try:
        await handler(payload, FakeContext())
    except Aborted as exc:
        code, details = exc.code, exc.details
    assert code is grpc.StatusCode.OK or code in DOCUMENTED, (code, details, request)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        named = details
        if method.client_streaming:  # a stream's errors name the message first
            named = re.sub(r"^messages\[\d+\]\.", "", named)
        field = named.split(":")[0].split("[")[0].split(".")[0]
        known = {*method.input_type.fields_by_name, "request"}
        if method.client_streaming:
            known.add("messages")
        assert field in known, details
