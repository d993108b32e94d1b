"""
grpc's standard health service, with Watch streams that end when Lake stops.

Clients that balance over several instances watch ``lake.ready`` (client-side health
checking, the ``healthCheckConfig`` of their service config) and stop sending to an
instance as soon as it reports NOT_SERVING. A Watch never ends by itself, though:
grpcio's ``server.stop(grace)`` waits for every open call, so one watching client
held every stop for the whole grace, and the calls still open at its end were
cancelled. ``end_watches()`` answers each open Watch with OK once the drain is over
(clients watch again, with backoff, wherever they reconnect), and a Watch that
arrives later gets the NOT_SERVING status and ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1 import health, health_pb2

__all__ = ["HealthService"]

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# grpc_health re-exports its async servicer implicitly, which strict mypy hides
# (name-defined), and so sees a base class of type Any (misc).
class HealthService(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """
    The standard async health servicer, plus ``end_watches()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """
        The standard Watch until ``end_watches()``; after it, one NOT_SERVING.
        """
        if self._ended.is_set():
            await context.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
            return
        watching = asyncio.ensure_future(super().Watch(request, context))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({watching, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the client goes away (this call is cancelled)
            for task in (watching, ended):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def end_watches(self) -> None:
        """
        End every open Watch with OK, and every later one at once.
        """
        self._ended.set()
