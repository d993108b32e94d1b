"""
Retry policies: which failures are worth another try, and how many tries.

Built on stamina; ``lake.logs`` replaces stamina's logging hook with one that logs no
call arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina
from stamina.instrumentation import RetryDetails, get_on_retry_hooks

from lake.errors import CircuitOpenError, ResourceExhaustedError, TransientError
from lake.protection.policy import retrying

__all__ = ["RetryPolicy", "is_transient"]

T = TypeVar("T")


def is_transient(exc: Exception) -> bool:
    """
    True for failures that may pass: Lake's transient errors, timeouts, network errors.

    Not an exhausted resource (no pooled connection in time): retrying it at once
    waits on the same exhausted pool again and adds load, so the caller is told
    at once (RESOURCE_EXHAUSTED, which a client may retry later). With three
    attempts such callers waited ~3x the acquire timeout before hearing it.
    Nor an open circuit breaker: it has just said the dependency is sick.
    """
    if isinstance(exc, ResourceExhaustedError | CircuitOpenError):
        return False
    return isinstance(exc, TransientError | TimeoutError | OSError)


def _name(fn: object) -> str:
    inner = getattr(fn, "func", fn)  # a functools.partial: the function it wraps
    return str(getattr(inner, "__qualname__", type(inner).__name__))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    Bounded retries: at most ``attempts`` tries within ``timeout`` seconds in total.
    """

    attempts: int = 3
    timeout: float = 5.0
    wait_initial: float = 0.05
    wait_max: float = 1.0

    def within(self, budget: float | None) -> RetryPolicy:
        """
        This policy with its total time cut to ``budget`` seconds when given.
        """
        if budget is None or budget >= self.timeout:
            return self
        return dataclasses.replace(self, timeout=max(budget, 0.001))

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on: Callable[[Exception], bool] = is_transient,
    ) -> T:
        """
        Call ``fn`` until it succeeds, fails for good, or the bounds run out.

        The first attempt is a plain call: the retry machinery (some 20 us a call)
        is entered only after a transient failure, for the attempts that remain.
        """
        try:
            return await fn()
        except Exception as exc:
            if self.attempts <= 1 or not on(exc) or not stamina.is_active():
                raise
            first = exc
        # The backoff stamina would have waited before its first retry, reported
        # through the same hooks (Lake's logs "retrying").
        jitter = random.uniform(0, self.wait_initial)  # noqa: S311 -- not crypto
        wait = 0.0 if stamina.is_testing() else self.wait_initial + jitter
        details = RetryDetails(
            name=_name(fn),
            args=(),
            kwargs={},
            retry_num=1,
            wait_for=wait,
            waited_so_far=0.0,
            caused_by=first,
        )
        for hook in get_on_retry_hooks():
            hook(details)
        if wait:
            await asyncio.sleep(wait)
        with retrying():  # later attempts deposit nothing into retry budgets
            return await self._retry(fn, on)

    async def _retry(
        self, fn: Callable[[], Awaitable[T]], on: Callable[[Exception], bool]
    ) -> T:
        async for attempt in stamina.retry_context(
            on=on,
            attempts=self.attempts - 1,
            timeout=self.timeout,
            # The ladder goes on where the first wait left it (exponential base 2).
            wait_initial=self.wait_initial * 2,
            wait_max=self.wait_max,
            wait_jitter=self.wait_initial,
        ):
            with attempt:
                return await fn()
        msg = "retry loop ended without a result"  # unreachable: stamina re-raises
        raise AssertionError(msg)
