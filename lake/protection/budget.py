"""
A retry budget per dependency, as Finagle and Linkerd keep one.

Every first attempt deposits; a retry may be spent while the retries of the last
``ttl_s`` seconds stay under ``ratio`` of the first attempts in that time plus a
floor of ``min_per_s`` a second (so a quiet service can still retry). Under an
outage every caller fails and retries stop at ~``ratio`` extra load instead of
multiplying it by the attempt count. stamina stays the retry engine: the budget
only answers "may this retry be spent?".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lake.protection.window import SecondBuckets

__all__ = ["BudgetSettings", "RetryBudget"]

_REQUESTS, _RETRIES = 0, 1  # counters of a window's bucket


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """
    Finagle's defaults: 20 % of requests, 10 retries a second, over 10 s.
    """

    ratio: float = 0.2
    min_per_s: float = 10.0
    ttl_s: int = 10


class RetryBudget:
    """
    Requests and retries counted in one-second buckets over ``ttl_s``.
    """

    def __init__(
        self,
        settings: BudgetSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = s = settings or BudgetSettings()
        self._clock = clock
        # First attempts and retries per second of the last ttl_s.
        self._window = SecondBuckets(s.ttl_s, 2)
        self.spent = 0
        self.denied = 0

    def deposit(self) -> None:
        """
        Count one first attempt.
        """
        self._window.add(self._clock(), _REQUESTS)

    def try_spend(self) -> bool:
        """
        Spend one retry if the budget holds it; False (and counted) if not.
        """
        now = self._clock()
        requests, retries = self._window.totals(now)
        s = self.settings
        allowed = s.ratio * requests + s.min_per_s * max(1, s.ttl_s)
        if retries + 1 > allowed:
            self.denied += 1
            return False
        self._window.add(now, _RETRIES)
        self.spent += 1
        return True

    def snapshot(self) -> dict[str, int]:
        """
        Retries spent and denied since start.
        """
        return {"retries": self.spent, "retries_denied": self.denied}
