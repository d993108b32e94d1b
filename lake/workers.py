"""
Background workers: loops that run beside the server while Lake serves.

Each worker is started once Lake is serving and stopped (cancelled and awaited)
before the server and the manager stop. The container decides which ones run.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

import structlog

from lake.errors import LakeError
from lake.models import MaintenanceReport, RelayReport

__all__ = ["LoopWorker", "RelayWorker", "UpkeepWorker", "Worker", "select_workers"]

log = structlog.get_logger(__name__)

# Longest pause between relay rounds while the stream peer keeps failing: events
# reach a peer that came back at most this long after (it was 30 s). A round
# against a dead peer costs one query and one failed call.
_MAX_RELAY_PAUSE_S = 5.0


class Worker(Protocol):
    """
    Something that runs in the background between ``start()`` and ``stop()``.
    """

    name: str

    def start(self) -> None:
        """
        Begin running; returns at once.
        """

    async def stop(self) -> None:
        """
        Stop running and wait until it has; idempotent.
        """


class DeliversEvents(Protocol):
    """
    One relay round on demand (``ServiceManager.deliver_events``).
    """

    async def deliver_events(self) -> RelayReport:
        """
        Deliver what is pending now.
        """


class Maintains(Protocol):
    """
    One upkeep round on demand (``ServiceManager.maintain``).
    """

    async def maintain(self) -> MaintenanceReport:
        """
        Partitions ahead, expired ones dropped, delivered events purged.
        """


class LoopWorker(abc.ABC):
    """
    Runs ``run()`` as one task named ``name``; ``stop()`` cancels and awaits it.
    """

    name = "worker"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """
        Start the loop (once).
        """
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """
        Cancel the loop and wait for it to end.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @abc.abstractmethod
    async def run(self) -> None:
        """
        The loop itself.
        """


class RelayWorker(LoopWorker):
    """
    Delivers outbox events while there are some; polls every ``interval`` when
    idle, backs off (doubling, up to 5 s) while the stream peer fails.
    """

    name = "relay"

    def __init__(self, manager: DeliversEvents, *, interval: float) -> None:
        super().__init__()
        self._manager = manager
        self._interval = interval

    async def run(self) -> None:
        """
        Relay rounds until cancelled.
        """
        pause = self._interval
        while True:
            try:
                report = await self._manager.deliver_events()
            except LakeError as exc:
                log.warning("relay_failed", error=str(exc))
                failed, delivered = True, 0
            else:
                failed, delivered = report.failed, report.delivered
            pause = min(pause * 2, _MAX_RELAY_PAUSE_S) if failed else self._interval
            if failed or not delivered:
                await asyncio.sleep(pause)


class UpkeepWorker(LoopWorker):
    """
    Runs store upkeep (partitions ahead, retention) every ``interval`` seconds.
    """

    name = "upkeep"

    def __init__(self, manager: Maintains, *, interval: float) -> None:
        super().__init__()
        self._manager = manager
        self._interval = interval

    async def run(self) -> None:
        """
        Upkeep rounds until cancelled.
        """
        while True:
            await asyncio.sleep(self._interval)
            try:
                report = await self._manager.maintain()
            except LakeError as exc:
                log.warning("upkeep_failed", error=str(exc))
            else:
                log.info("upkeep_done", created=report.created, dropped=report.dropped)


def select_workers(
    upkeep: Worker,
    relay: Worker,
    *,
    relay_enabled: bool,
    owner: bool = True,
    publisher: Worker | None = None,
    publishing: bool = False,
    usage: Worker | None = None,
) -> Sequence[Worker]:
    """
    The workers to run: upkeep always, the relay only with a stream peer, both
    only in the first server process of a ``lake serve`` (``owner``); with several
    processes (``publishing``), each also publishes its figures. The usage flusher
    runs in every process: each flushes its own counts, and they add up.
    """
    chosen: list[Worker] = []
    if owner:
        chosen += [upkeep, relay] if relay_enabled else [upkeep]
    if publishing and publisher is not None:
        chosen.append(publisher)
    if usage is not None:
        chosen.append(usage)
    return chosen
