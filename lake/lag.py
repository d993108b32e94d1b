"""
Event-loop lag: how late the loop runs what it was asked to run.

A task asks to wake every ``period`` seconds and records how much later it woke.
Health shows the worst lag of the last ``window`` seconds as the ``event_loop``
component (DEGRADED above a threshold), and health checks use the record to tell a
slow dependency from a loop that was too busy to hear its answer: a check that timed
out while the loop stalled for half its time box is not the dependency's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

__all__ = ["LoopLag"]


class LoopLag:
    """
    Samples the running loop's lag in a background task.

    Args:
        threshold_ms: worst lag in the window above which the loop is DEGRADED.
        period: seconds between samples.
        window: seconds of samples kept.
    """

    def __init__(
        self, *, threshold_ms: float = 200.0, period: float = 0.05, window: float = 5.0
    ) -> None:
        self._threshold_ms = threshold_ms
        self._period = period
        self._window = window
        # (perf_counter when the sample was taken, lag in seconds)
        self._samples: deque[tuple[float, float]] = deque()
        self._due = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """
        Start sampling on the running loop; idempotent.
        """
        if self._task is None or self._task.done():
            self._due = time.perf_counter() + self._period
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """
        Stop sampling; idempotent.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            now = time.perf_counter()
            self._samples.append((now, max(0.0, now - self._due)))
            self._due = now + self._period
            horizon = now - self._window
            while self._samples and self._samples[0][0] < horizon:
                self._samples.popleft()

    def _overdue(self, now: float) -> float:
        # A sample not yet taken because the loop is still catching up.
        if self._task is None:
            return 0.0
        return max(0.0, now - self._due)

    def worst_ms(self) -> float:
        """
        The worst lag of the window (the current overdue sample included), in ms.
        """
        worst = max((lag for _, lag in self._samples), default=0.0)
        return max(worst, self._overdue(time.perf_counter())) * 1000.0

    def stalled_since(self, started: float) -> float:
        """
        Seconds the loop lagged since ``started`` (a ``time.perf_counter()`` value).
        """
        now = time.perf_counter()
        total = sum(lag for at, lag in self._samples if at >= started)
        return total + self._overdue(now)

    async def probe(self) -> str | None:
        """
        Health probe: None when the loop keeps up, else a DEGRADED reason.
        """
        worst = self.worst_ms()
        if worst > self._threshold_ms:
            return f"event loop lag {worst:.0f} ms (threshold {self._threshold_ms:g})"
        return None
