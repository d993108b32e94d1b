"""
Retry policies: which failures are worth another try, and how many tries.

Built on stamina. Its default structlog hook logs the retried call's arguments (a DSN,
say), so Lake installs its own hook that logs only names and numbers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina
import structlog
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from lake.errors import TransientError

__all__ = ["RetryPolicy", "install_retry_hooks", "is_transient"]

T = TypeVar("T")
log = structlog.get_logger(__name__)


def is_transient(exc: Exception) -> bool:
    """
    True for failures that may pass: Lake's transient errors, timeouts, network errors.
    """
    return isinstance(exc, TransientError | TimeoutError | OSError)


def _log_retry(details: RetryDetails) -> None:
    log.warning(
        "retrying",
        callable=details.name,
        retry_num=details.retry_num,
        wait_for=round(details.wait_for, 3),
        waited_so_far=round(details.waited_so_far, 3),
        error=type(details.caused_by).__name__,
        reason=str(details.caused_by)
        if isinstance(details.caused_by, TransientError)
        else None,
    )


def install_retry_hooks() -> None:
    """
    Replace stamina's default hooks with one that logs no call arguments.
    """
    set_on_retry_hooks([_log_retry])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    Bounded retries: at most ``attempts`` tries within ``timeout`` seconds in total.
    """

    attempts: int = 3
    timeout: float = 5.0
    wait_initial: float = 0.05
    wait_max: float = 1.0

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on: Callable[[Exception], bool] = is_transient,
    ) -> T:
        """
        Call ``fn`` until it succeeds, fails for good, or the bounds run out.
        """
        async for attempt in stamina.retry_context(
            on=on,
            attempts=self.attempts,
            timeout=self.timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_initial,
        ):
            with attempt:
                return await fn()
        msg = "retry loop ended without a result"  # unreachable: stamina re-raises
        raise AssertionError(msg)
