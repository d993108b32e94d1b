"""
Waiting on a condition, bounded: how tests wait for background work, never a bare
sleep that orders events.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 10.0,
    every: float = 0.01,
) -> None:
    """
    Poll ``condition`` (sync or async) until it holds; fail after ``within`` s.
    """
    deadline = time.monotonic() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            msg = f"condition not met within {within:g} s"
            raise AssertionError(msg)
        await asyncio.sleep(every)
