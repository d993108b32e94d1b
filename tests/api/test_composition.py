"""
Lake built through the container: server-side providers overridden by a test take
effect over the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest
from dependency_injector import providers
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.api.admission import Admission
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import api_container, auth, running_container

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Interceptor = grpc.aio.ServerInterceptor

NEAREST = lake_pb2.NearestRequest(lon=0.0, lat=0.0, k=1)


class Recorder(_Interceptor):
    """An interceptor that records each method it sees and passes the call on."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.methods.append(details.method)
        return await continuation(details)


async def test_an_overridden_admission_budget_is_the_one_served(lake_settings):
    """With the admission provider replaced by a zero budget, API calls are refused
    and probes still answer."""
    container = api_container(lake_settings)
    container.admission.override(
        providers.Singleton(
            Admission, max_api_calls=0, max_open_streams=0, max_streams_per_peer=0
        )
    )
    async with running_container(container) as (server, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spatial.Nearest(NEAREST, metadata=auth(), timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="lake.ready"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert server.admission.refused["api"] == 1


async def test_an_overridden_interceptor_sees_every_call(lake_settings):
    """An interceptor put in place of the decode guard runs on the served calls."""
    recorder = Recorder()
    container = api_container(lake_settings)
    container.decode_guard.override(providers.Object(recorder))
    async with running_container(container) as (_, _, channel):
        spatial = lake_pb2_grpc.SpatialStub(channel)
        await spatial.Nearest(NEAREST, metadata=auth(), timeout=5)
    assert "/lake.v1.Spatial/Nearest" in recorder.methods


async def test_the_server_uses_the_managers_and_the_keyrings_singletons(lake_settings):
    """The server, its interceptors and GetStatus share one admission and one
    keyring, and serve the container's manager."""
    container = api_container(lake_settings)
    async with running_container(container) as (server, manager, _):
        assert server.admission is container.admission()
        assert server.keyring is container.keyring()
        assert manager is container.manager()
