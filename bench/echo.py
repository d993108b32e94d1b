"""
A bare grpc.aio echo server: the floor any gRPC service on this machine stands on.

``python -m bench.echo PORT`` serves ``/bench.Echo/Echo`` (bytes in, the same bytes
out) on 127.0.0.1:PORT until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def serve(port: int) -> None:
    """
    Serve the echo method until cancelled.
    """
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
