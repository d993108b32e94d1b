"""
Adaptive timeouts: clamp(multiplier x rolling p99, floor, ceiling), never past the
caller's remaining deadline.

Each tracker keeps the last ``samples`` latencies of one dependency and operation
kind in a ring and recomputes its p99 every ``every`` samples (a sort of 256
floats, ~10 us, so ~0.3 us a call). Until ``warmup`` samples are in, the ceiling
applies. An attempt that timed out is recorded at its timeout and raises the timeout
to ``multiplier`` times that at once, so when the dependency slows down the
timeout climbs with every cut until calls fit again, and falls back once it is
fast again: after ``samples`` calls the old figures are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

__all__ = ["AdaptiveTimeout", "AttemptWatch", "TimeoutSettings"]


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    """
    Bounds of one adaptive timeout, in seconds.
    """

    multiplier: float = 3.0
    floor_s: float = 1.0
    ceiling_s: float = 30.0
    samples: int = 256
    every: int = 32
    warmup: int = 32


class AdaptiveTimeout:
    """
    One dependency-and-kind's rolling latency and the timeout it gives.
    """

    __slots__ = ("_count", "_i", "_ring", "_timeout", "p99", "settings", "timeouts")

    def __init__(self, settings: TimeoutSettings | None = None) -> None:
        self.settings = s = settings or TimeoutSettings()
        self._ring: list[float] = []
        self._i = 0
        self._count = 0
        self.p99: float | None = None
        self._timeout = s.ceiling_s
        self.timeouts = 0

    def record(self, seconds: float) -> None:
        """
        Add one finished attempt's latency.
        """
        s = self.settings
        if len(self._ring) < s.samples:
            self._ring.append(seconds)
        else:
            self._ring[self._i] = seconds
            self._i = (self._i + 1) % s.samples
        self._count += 1
        if self._count % s.every == 0 and len(self._ring) >= s.warmup:
            self._recompute()

    def timed_out(self, seconds: float) -> None:
        """
        An attempt ran out its timeout of ``seconds``: counted at that latency,
        and the timeout recomputed at once (a dependency that slowed down gets
        ``multiplier`` times more on the very next attempt, not 32 calls later).
        """
        self.timeouts += 1
        self.record(seconds)
        if len(self._ring) >= self.settings.warmup:
            wanted = self.settings.multiplier * seconds
            ceiling = self.settings.ceiling_s
            self._timeout = min(ceiling, max(self._timeout, wanted))

    def _recompute(self) -> None:
        s = self.settings
        ordered = sorted(self._ring)
        self.p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        wanted = s.multiplier * self.p99
        self._timeout = min(s.ceiling_s, max(s.floor_s, wanted))

    def timeout(self, remaining: float | None) -> float:
        """
        The time an attempt may take now, within the caller's ``remaining`` time.
        """
        if remaining is None:
            return self._timeout
        return min(self._timeout, remaining)

    def snapshot(self) -> dict[str, float | int | None]:
        """
        The current timeout and the p99 it came from, in ms.
        """
        return {
            "timeout_ms": round(self._timeout * 1000, 1),
            "p99_ms": None if self.p99 is None else round(self.p99 * 1000, 2),
            "timeouts": self.timeouts,
        }


class AttemptWatch:
    """
    Cuts attempts that outlive their timeout, for a fraction of asyncio.timeout's
    cost: arming is a dict entry, and one watcher task wakes every ``tick_s`` while
    attempts are in flight and cancels the late ones. (``asyncio.timeout`` costs a
    timer and its cancellation per call, ~5 us; the timeouts here are a second or
    more, so ``tick_s`` of lateness does not matter.)
    """

    def __init__(self, tick_s: float = 0.02) -> None:
        self._tick_s = tick_s
        self._armed: dict[asyncio.Task[Any], float] = {}
        self._fired: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def arm(self, task: asyncio.Task[Any], ends: float) -> None:
        """
        Cancel ``task`` if it is still armed at loop time ``ends``.
        """
        self._armed[task] = ends
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def disarm(self, task: asyncio.Task[Any]) -> bool:
        """
        Stop watching ``task``; True if it was cancelled for being late (then its
        cancellation is taken back, to be answered by the caller's own error).
        """
        self._armed.pop(task, None)
        if task in self._fired:
            self._fired.discard(task)
            task.uncancel()
            return True
        return False

    async def aclose(self) -> None:
        """
        Stop the watcher.
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._armed:
                await asyncio.sleep(self._tick_s)
                now = loop.time()
                late = [task for task, ends in self._armed.items() if ends <= now]
                for task in late:
                    del self._armed[task]
                    self._fired.add(task)
                    task.cancel()
        finally:
            if self._watcher is asyncio.current_task():
                self._watcher = None
