"""
LocalBuckets: an in-process token bucket per key, the fallback while Redis does not
answer (each instance then allows the configured rate on its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LocalBuckets"]


class LocalBuckets:
    """
    Token buckets: ``rate`` tokens a second, at most ``burst`` saved up.

    Args:
        max_keys: past this many buckets, all are dropped (a flood of tenants).
        clock: seconds, monotonic.
    """

    def __init__(
        self,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[tuple[str, str], list[float]] = {}  # [tokens, at]

    def take(self, key: tuple[str, str], rate: float, burst: int) -> float | None:
        """
        Take one token: None when there was one, else seconds until there is.
        """
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = [float(burst), now]
        tokens = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / rate
