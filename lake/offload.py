"""
CPU-heavy work off the event loop, on ONE worker thread.

Converting or checking a million values takes a few hundred milliseconds of pure
Python; on the event loop that would stall every other call and every health probe.
On a worker thread the GIL's switch interval (5 ms) lets the loop run meanwhile. One
thread, not a pool: with several threads competing for the GIL the loop waited
several switch intervals at a time (measured: 150-190 ms of lag with four heavy
requests on the default pool), and pure-Python work gains nothing from more threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["HEAVY", "off_loop", "run_heavy"]

P = ParamSpec("P")
T = TypeVar("T")

# Values a piece of work may touch (about 50 ns each) before it leaves the loop.
HEAVY = 50_000

_executor: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    global _executor  # one thread per process, made on first use
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-cpu")
    return _executor


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """
    Run ``fn`` on the worker thread (context variables included).
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, **kwargs)
    context = contextvars.copy_context()
    return await loop.run_in_executor(_worker(), context.run, call)


async def run_heavy(fn: Callable[[], T], weight: int) -> T:
    """
    ``fn()`` here when ``weight`` (values touched) is small, else off the loop.
    """
    if weight <= HEAVY:
        return fn()
    return await off_loop(fn)
