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

__all__ = ["BudgetSettings", "RetryBudget"]


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
        n = max(1, s.ttl_s)
        self._stamps = [-1] * n
        self._requests = [0] * n
        self._retries = [0] * n
        self.spent = 0
        self.denied = 0

    def deposit(self) -> None:
        """
        Count one first attempt.
        """
        self._requests[self._bucket(self._clock())] += 1

    def try_spend(self) -> bool:
        """
        Spend one retry if the budget holds it; False (and counted) if not.
        """
        now = self._clock()
        oldest = int(now) - len(self._stamps)
        requests = retries = 0
        for i, stamp in enumerate(self._stamps):
            if stamp > oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        s = self.settings
        allowed = s.ratio * requests + s.min_per_s * len(self._stamps)
        if retries + 1 > allowed:
            self.denied += 1
            return False
        self._retries[self._bucket(now)] += 1
        self.spent += 1
        return True

    def snapshot(self) -> dict[str, int]:
        """
        Retries spent and denied since start.
        """
        return {"retries": self.spent, "retries_denied": self.denied}

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % len(self._stamps)
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._requests[i] = self._retries[i] = 0
        return i
