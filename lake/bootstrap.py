"""
Lake as one object: the manager, the gRPC server and the background workers,
started in order and stopped in reverse, exactly once.

Start::

    server.start()  (listening, NOT_SERVING; /metrics listening too)
      -> manager.start()  (resources opened, migrated; bounded retries)
        -> server.serving(token store)  (SERVING, health monitor, token refresh)
          -> workers start  (upkeep; relay with a stream peer)

Stop (also after a failed or cancelled start): workers, server (within the
grace), /metrics, drains (the last usage flush, once no call is in flight),
manager (which closes the resources). The container builds it
(``Container.lake``; ``Container.migration`` is the same without a server);
the CLI only runs it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from lake.api.server import LakeServer
from lake.errors import LakeError
from lake.manager import ServiceManager
from lake.metricserver import MetricsServer
from lake.tokens import TokenStore
from lake.workers import Worker

__all__ = ["Lake"]

log = structlog.get_logger(__name__)

TokenSource = Callable[[], "Awaitable[TokenStore] | TokenStore"]


class Drains(Protocol):
    """
    Work to finish after the server stopped and before the resources close.
    """

    async def drain(self) -> None:
        """
        Finish it (a failure is the drain's own to log).
        """


class Lake:
    """
    The running service; ``start()``/``stop()`` for tests, ``run(stop)`` for the CLI.

    Args:
        manager: coordinates the components; opens the resources when it starts.
        server: the gRPC server, or None (``lake migrate``).
        tokens: resolves the token store once the resources are open.
        workers: background loops run while serving.
        grace: seconds in-flight calls get when the server stops.
        profile: the settings profile, for the ready log line.
        metrics: the Prometheus endpoint, listening from start to stop.
        drains: finished once the server has stopped, before the manager stops
            (the last usage flush).
    """

    def __init__(
        self,
        manager: ServiceManager,
        *,
        server: LakeServer | None = None,
        tokens: TokenSource | None = None,
        workers: Sequence[Worker] = (),
        grace: float = 5.0,
        profile: str = "",
        metrics: MetricsServer | None = None,
        drains: Sequence[Drains] = (),
    ) -> None:
        self.manager = manager
        self.server = server
        self.metrics = metrics
        self._tokens = tokens
        self._workers = list(workers)
        self._drains = list(drains)
        self._grace = grace
        self._profile = profile
        self._listening = False
        self._stopped = False

    async def start(self) -> None:
        """
        Listen, start the manager, serve, start the workers; on any failure (or
        cancellation) stop what started, once, and raise.
        """
        try:
            await self._listen()
            await self.manager.start()
            await self._serve()
        except BaseException:
            await self.stop()
            raise

    async def run(self, stop: asyncio.Event) -> int:
        """
        Start unless ``stop`` is set first, serve until it is, then stop; the exit
        code: 0, or 1 when the manager could not start.
        """
        try:
            await self._listen()
            if not await self._start_or_stop(stop):
                return 1
            await self._serve()
            await stop.wait()
            return 0
        finally:
            await self.stop()

    async def stop(self) -> None:
        """
        Stop the workers, then the server within the grace, then the manager;
        idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        for worker in reversed(self._workers):
            await worker.stop()
        if self.server is not None and self._listening:
            await self.server.stop(self._grace)
        if self.metrics is not None:
            await self.metrics.stop()
        for drain in self._drains:
            await drain.drain()
        await self.manager.stop()

    async def _listen(self) -> None:
        if self.server is not None:
            await self.server.start()
            self._listening = True
        if self.metrics is not None:
            await self.metrics.start()

    async def _serve(self) -> None:
        if self.server is not None:
            store = None if self._tokens is None else await _resolve(self._tokens)
            await self.server.serving(store)
            log.info("lake_ready", address=self.server.address, profile=self._profile)
        for worker in self._workers:
            worker.start()

    async def _start_or_stop(self, stop: asyncio.Event) -> bool:
        starting = asyncio.create_task(self.manager.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            log.info("start_cancelled")
            return False
        except LakeError as exc:
            log.error("start_failed", error=str(exc))  # noqa: TRY400 -- no traceback
            return False
        return True


async def _resolve(source: TokenSource) -> TokenStore:
    store = source()
    if inspect.isawaitable(store):
        return await store
    return store
