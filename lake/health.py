"""
Health: per-component checks, time-boxed and run concurrently, and their aggregation.

Rules:

- A component is UP, DEGRADED or DOWN. A check that raises, or does not answer within
  its time box, is DOWN with a redacted reason; one that returns a reason is DEGRADED.
- Lake is *ready* when no critical component (PostgreSQL and the stores it needs) is
  DOWN. A non-critical component that is DOWN (Redis, pgvector missing, a peer)
  leaves Lake ready but DEGRADED.
- Lake is *live* while its event loop runs checks; liveness never depends on a
  dependency, so an outage of a shared database restarts no pod.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lake.errors import LakeError

__all__ = [
    "Check",
    "ComponentHealth",
    "HealthReport",
    "Stalls",
    "Status",
    "aggregate",
    "run_checks",
]


class Status(enum.IntEnum):
    """
    Component status, ordered from worst to best.
    """

    DOWN = 0
    DEGRADED = 1
    UP = 2


@dataclass(frozen=True, slots=True)
class Check:
    """
    One named health check.
    """

    name: str
    probe: Callable[[], Awaitable[str | None]]
    critical: bool
    # What a failed probe means: DOWN, or DEGRADED for a part that not every
    # operation needs (a mesh peer).
    failure: Status = Status.DOWN
    # What to report as latency instead of the probe's own time (the loop's lag).
    measure: Callable[[], float] | None = None


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """
    The result of one check.
    """

    name: str
    status: Status
    latency_ms: float
    reason: str
    critical: bool


@dataclass(frozen=True, slots=True)
class HealthReport:
    """
    Every component's health and the aggregate verdict.
    """

    status: Status
    ready: bool
    live: bool
    components: tuple[ComponentHealth, ...]

    def component(self, name: str) -> ComponentHealth:
        """
        Return the component called ``name``.
        """
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


def _reason(exc: BaseException, timeout: float) -> str:
    # Only Lake's own messages are shown; they are written to carry no secrets.
    if isinstance(exc, LakeError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return "network error"
    return "check failed"


class Stalls(Protocol):
    """
    Tells how long the event loop stalled since a moment (``lake.lag.LoopLag``).
    """

    def stalled_since(self, started: float) -> float:
        """
        Seconds of loop lag since ``started`` (a ``time.perf_counter()`` value).
        """
        ...


async def _probe(check: Check, time_box: float, stalls: Stalls | None) -> str | None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(time_box):
            return await check.probe()
    except TimeoutError:
        # A loop too busy to run the reply is not the dependency's failure: ask
        # once more, now that the loop has caught up.
        if stalls is None or stalls.stalled_since(started) < time_box / 2:
            raise
    async with asyncio.timeout(time_box):
        return await check.probe()


async def _run_one(
    check: Check, time_box: float, stalls: Stalls | None = None
) -> ComponentHealth:
    started = time.perf_counter()
    try:
        degraded = await _probe(check, time_box, stalls)
    except Exception as exc:
        status, reason = check.failure, _reason(exc, time_box)
    else:
        status = Status.UP if degraded is None else Status.DEGRADED
        reason = degraded or ""
    if check.measure is not None:
        latency_ms = check.measure()
    else:
        latency_ms = (time.perf_counter() - started) * 1000.0
    return ComponentHealth(
        check.name, status, round(latency_ms, 3), reason, check.critical
    )


def aggregate(
    components: Sequence[ComponentHealth], *, live: bool = True
) -> HealthReport:
    """
    Fold component results into one report (see the module rules).
    """
    ready = live and all(c.status > Status.DOWN for c in components if c.critical)
    if not ready:
        status = Status.DOWN
    elif all(c.status == Status.UP for c in components):
        status = Status.UP
    else:
        status = Status.DEGRADED
    return HealthReport(
        status=status, ready=ready, live=live, components=tuple(components)
    )


async def run_checks(
    checks: Sequence[Check], time_box: float, stalls: Stalls | None = None
) -> HealthReport:
    """
    Run ``checks`` concurrently, each within ``time_box`` seconds, and aggregate.

    With ``stalls``, a check that timed out while the event loop stalled for half
    its time box is asked once more instead of being reported DOWN.
    """
    results = await asyncio.gather(*(_run_one(c, time_box, stalls) for c in checks))
    return aggregate(results)
