"""
Event-loop lag: measured as its own component, and never blamed on a dependency.
"""

from __future__ import annotations

import asyncio
import time

from lake.health import Check, Status, run_checks
from lake.lag import LoopLag


def stall(seconds: float) -> None:
    """Block the event loop, as CPU-bound work on it would."""
    time.sleep(seconds)


async def quick_probe() -> str | None:
    await asyncio.sleep(0.01)
    return None


async def run_with_stall(lag: LoopLag | None, seconds: float, box: float):
    """Run one quick check while the loop blocks for ``seconds``."""

    async def block() -> None:
        await asyncio.sleep(0)  # let the check start first
        stall(seconds)

    blocker = asyncio.create_task(block())
    report = await run_checks([Check("postgres", quick_probe, critical=True)], box, lag)
    await blocker
    return report.component("postgres")


async def test_a_stalled_loop_fails_a_check_without_the_lag_record():
    """Without a lag record, a check the loop could not hear is reported DOWN."""
    result = await run_with_stall(None, seconds=0.3, box=0.1)
    assert result.status == Status.DOWN


async def test_a_stalled_loop_is_not_blamed_on_the_dependency():
    """With the lag record, the check is asked again and the dependency is UP."""
    lag = LoopLag(period=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.05)  # a few samples on a healthy loop
        result = await run_with_stall(lag, seconds=0.3, box=0.1)
    finally:
        await lag.stop()
    assert result.status == Status.UP


async def test_lag_component_degrades_above_its_threshold():
    """A stall longer than the threshold makes the probe report DEGRADED."""
    lag = LoopLag(threshold_ms=150.0, period=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.05)
        assert await lag.probe() is None
        stall(0.3)
        await asyncio.sleep(0.03)  # let the sampler record it
        reason = await lag.probe()
        assert lag.worst_ms() >= 250.0
    finally:
        await lag.stop()
    assert reason is not None
    assert reason.startswith("event loop lag")
