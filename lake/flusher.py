"""
UsageFlusher: writes the meter's counts to PostgreSQL every ``usage.flush_interval``
seconds, once more when Lake stops (after the server has let in-flight calls
finish), and on demand before usage is read.

Each flush writes the meter's current batch; a batch that failed (or whose reply was
lost) stays in memory and is written again, with the same id, at the next flush,
and the store adds a batch id only once. While PostgreSQL refuses, the counts stay
in memory (bounded, see ``lake.metering``). A Lake killed with SIGKILL loses what
it had not flushed: at most one interval's counts while PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from lake.errors import DeadlineExceededError, LakeError
from lake.manager import State
from lake.metering import Meter, UsageStore
from lake.workers import LoopWorker

__all__ = ["UsageFlusher"]

log = structlog.get_logger(__name__)

StoreSource = Callable[[], "Awaitable[UsageStore] | UsageStore"]

# Batch ids are kept this long: a batch is retried every interval until stored,
# so an id only needs to outlive the longest outage an instance waits through.
_KEEP_BATCH_IDS_DAYS = 7
_PURGE_EVERY_S = 3600.0


class HasState(Protocol):
    """
    The manager, as far as the flusher cares: is it running?
    """

    @property
    def state(self) -> State:
        """
        The manager's lifecycle state.
        """
        ...


class UsageFlusher(LoopWorker):
    """
    Flushes ``meter`` into the usage store every ``interval`` seconds and at
    ``drain()``; each flush is bounded by ``timeout``.
    """

    name = "usage-flusher"

    def __init__(
        self,
        meter: Meter,
        store: StoreSource,
        manager: HasState,
        *,
        interval: float,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self._meter = meter
        self._source = store
        self._manager = manager
        self._interval = interval
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._failing = False
        self._purged_at = time.monotonic()

    async def run(self) -> None:
        """
        Flush every interval until cancelled.
        """
        while True:
            await asyncio.sleep(self._interval)
            await self.flush_quietly()

    async def drain(self) -> None:
        """
        The last flush, once the server has stopped: log what could not be stored.
        """
        if not await self.flush_quietly() and self._meter.rows:
            log.warning("usage_unflushed", rows=self._meter.rows)

    def stats(self) -> dict[str, int]:
        """
        Rows held (counting or waiting to be stored), calls not metered since the
        last batch for want of room, and 1 while flushes are failing.
        """
        return {**self._meter.stats(), "flush_failing": int(self._failing)}

    async def flush_quietly(self) -> bool:
        """
        ``flush()``, a failure logged (once until a flush succeeds again) instead of
        raised; True when everything held was stored.
        """
        try:
            await self.flush()
        except LakeError as exc:
            if not self._failing:
                log.warning("usage_flush_failed", error=str(exc), rows=self._meter.rows)
            self._failing = True
            return False
        if self._failing:
            log.info("usage_flush_recovered")
            self._failing = False
        return True

    async def flush(self) -> int:
        """
        Write what the meter holds (the batch left from a failed flush first, then
        what came since); return the calls stored. Does nothing unless the manager
        is running.

        Raises:
            LakeError: the store failed; the counts stay for the next flush.
        """
        if self._manager.state is not State.RUNNING:
            return 0
        stored = 0
        async with self._lock:
            store = await self._resolve()
            for _ in range(2):  # the unacknowledged batch, then the newer counts
                batch = self._meter.batch()
                if batch is None:
                    break
                try:
                    async with asyncio.timeout(self._timeout):
                        added = await store.add(batch)
                except TimeoutError:
                    msg = "usage flush did not finish in time"
                    raise DeadlineExceededError(msg) from None
                self._meter.acknowledge(batch)
                stored += batch.calls if added else 0
            await self._purge(store)
        return stored

    async def _resolve(self) -> UsageStore:
        found = self._source()
        return await found if inspect.isawaitable(found) else found

    async def _purge(self, store: UsageStore) -> None:
        if time.monotonic() - self._purged_at < _PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                await store.purge(_KEEP_BATCH_IDS_DAYS)
        except (LakeError, TimeoutError) as exc:  # ids pile up a little longer
            log.info("usage_purge_failed", error=str(exc) or "timed out")
