"""
Fixed-bucket histograms for the hot path: one ``bisect`` and two additions.

prometheus-client's own ``Histogram.labels(...).observe()`` takes a lock, builds a
label tuple and walks every bucket on each call (several µs); Lake records on its
event loop only, so a plain list of counts is enough, and a collector turns it into
a Prometheus histogram when scraped (``samples()``). Buckets are Prometheus's
``le``: a value equal to a bound counts in that bound's bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

__all__ = [
    "ACQUIRE_BUCKETS",
    "CREATION_BUCKETS",
    "DURATION_BUCKETS",
    "Histogram",
]

# Seconds. An operation takes from ~0.3 ms (a cached read) to the 30 s deadline.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# A free pooled connection is handed over in ~10 µs; a queue for one lasts up to
# the acquire timeout (2 s by default).
ACQUIRE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# A new PostgreSQL connection: a few ms on loopback, more with TLS or far away.
CREATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Histogram:
    """
    Counts per bucket and the sum of the observed values.

    Args:
        bounds: the buckets' upper bounds, ascending (+Inf is added).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            msg = "bucket bounds must ascend strictly"
            raise ValueError(msg)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """
        Count one value.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """
        How many values were observed.
        """
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """
        ``(le, count of values <= le)`` per bucket, ``+Inf`` last.
        """
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            yield ("+Inf" if bound == float("inf") else repr(bound)), total

    def quantile(self, q: float) -> float:
        """
        The ``q`` quantile estimated as Prometheus's ``histogram_quantile`` does
        (linear within the bucket); 0.0 when empty, the last bound past it.
        """
        total = self.count
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        lower = 0.0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if n and seen + n >= rank:
                return lower + (bound - lower) * (rank - seen) / n
            seen += n
            lower = bound
        return self.bounds[-1] if self.bounds else 0.0
