"""
Property test over a real Lake: generated requests for every lake.v1 method, sent
over gRPC to PostgreSQL and Redis, answer only documented codes.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.v1 import lake_pb2
from tests.api.conftest import auth
from tests.api.test_fuzz import Call, invoke, path_of, problem
from tests.strategies import lake_methods, requests_for

METHODS = lake_methods()


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_generated_requests_answer_documented_codes(api, data):
    """Any generated request, over the wire: a documented status naming its field."""
    if not api.manager.stats:  # the first example: the collection requests name
        await api.vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="docs", dim=3, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )
    method = data.draw(st.sampled_from(METHODS))
    request = data.draw(requests_for(method))
    fields = frozenset(f.name for f in method.input_type.fields)
    call = Call(path_of(method), method.client_streaming, False, request, fields)
    code, details = await invoke(api.channel, call)
    assert problem(call, code, details) is None, (call.path, code, details, request)
