"""
A bare grpc.aio echo server: the floor any gRPC service on this machine stands on.

``python -m bench.echo PORT`` serves on 127.0.0.1:PORT until killed:

- ``/bench.Echo/Echo``: bytes in, the same bytes out (no protobuf at all);
- ``/lake.v1.Spatial/Nearest``: grpcio's floor for Lake's method, with none of
  Lake: the request parsed, the caller's metadata, deadline and peer read (as any
  authenticating server must), and ten matches answered, built once at start.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from lake.v1 import lake_pb2

_MATCHES = lake_pb2.FeaturesResponse(
    matches=[
        lake_pb2.FeatureMatch(
            feature=lake_pb2.Feature(id=f"f{i}", lon=1.5 + i, lat=40.25 + i),
            distance_m=1234.5 + i,
        )
        for i in range(10)
    ]
)


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _nearest(
    request: lake_pb2.NearestRequest, context: Any
) -> lake_pb2.FeaturesResponse:
    dict(context.invocation_metadata() or ())
    context.time_remaining()
    context.peer()
    return _MATCHES


async def serve(port: int) -> None:
    """
    Serve the echo method and the floor of Spatial.Nearest until cancelled.
    """
    server = grpc.aio.server()
    echo = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    nearest = {
        "Nearest": grpc.unary_unary_rpc_method_handler(
            _nearest,
            request_deserializer=lake_pb2.NearestRequest.FromString,
            response_serializer=lake_pb2.FeaturesResponse.SerializeToString,
        )
    }
    for service, handlers in (("bench.Echo", echo), ("lake.v1.Spatial", nearest)):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),)
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
