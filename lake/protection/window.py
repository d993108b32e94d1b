"""
A time-based window of one-second buckets, each holding a few counters.

The breaker (calls, failures, slow calls) and the retry budget (requests,
retries) both judge the last N seconds this way.
"""

from __future__ import annotations

__all__ = ["SecondBuckets"]


class SecondBuckets:
    """
    ``seconds`` buckets of ``counters`` counters each, for the last ``seconds``.
    """

    __slots__ = ("_counts", "_stamps")

    def __init__(self, seconds: int, counters: int) -> None:
        n = max(1, seconds)
        self._stamps = [-1] * n
        self._counts = [[0] * counters for _ in range(n)]

    def add(self, now: float, counter: int, amount: int = 1) -> None:
        """
        Add ``amount`` to ``counter`` in the bucket of ``now``.
        """
        self.bucket(now)[counter] += amount

    def bucket(self, now: float) -> list[int]:
        """
        The counters of ``now``'s second (emptied when the second is new).
        """
        second = int(now)
        i = second % len(self._stamps)
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._counts[i] = [0] * len(self._counts[i])
        return self._counts[i]

    def totals(self, now: float) -> list[int]:
        """
        Each counter summed over the last ``seconds`` seconds.
        """
        oldest = int(now) - len(self._stamps)
        sums = [0] * len(self._counts[0])
        for stamp, counts in zip(self._stamps, self._counts, strict=True):
            if stamp > oldest:
                for j, value in enumerate(counts):
                    sums[j] += value
        return sums

    def clear(self) -> None:
        """
        Forget every bucket.
        """
        self._stamps = [-1] * len(self._stamps)
