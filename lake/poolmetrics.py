"""
PostgreSQL pool figures as HikariCP reports them, measured at Lake's own acquire.

asyncpg knows how many connections it holds and how many are idle, but not who is
waiting for one, how long a wait took or how long a connection was held.
``Database.connection()`` tells a ``PoolMetrics`` (a few hundred ns a call)::

    started = metrics.acquiring()        pending + 1
    held = metrics.acquired(started)     pending - 1, acquire time observed
      ... the caller uses the connection ...
    metrics.released(held)               usage (held) time observed
    metrics.timed_out() / abandoned()    pending - 1 (no connection came)

and the pool's ``connect`` hook (``lake.resources.postgres``) reports each new
connection and how long opening it took. ``collect()`` turns the figures into
Prometheus families when scraped; ``figures()`` is what ``lake status`` shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lake.histogram import (
    ACQUIRE_BUCKETS,
    CREATION_BUCKETS,
    DURATION_BUCKETS,
    Histogram,
)

__all__ = ["PoolMetrics", "histogram_family"]


class PoolMetrics:
    """
    Waiters, waits, holds, timeouts and new connections of one asyncpg pool.

    One per container, kept across restarts (the counters only grow); the
    ``Database`` of each start points it at its pool with ``watch()``.
    """

    def __init__(self) -> None:
        self.pending = 0
        self.timeouts = 0
        self.created = 0
        self.acquire = Histogram(ACQUIRE_BUCKETS)
        self.usage = Histogram(DURATION_BUCKETS)
        self.creation = Histogram(CREATION_BUCKETS)
        self._pool: Any = None

    def watch(self, pool: Any) -> None:
        """
        Read the pool's size, idle count and bounds from ``pool`` from now on.
        """
        self._pool = pool

    # --- the hot path -------------------------------------------------------------

    def acquiring(self) -> float:
        """
        A task starts waiting for a connection; returns when (perf_counter).
        """
        self.pending += 1
        return time.perf_counter()

    def acquired(self, started: float) -> float:
        """
        The wait that began at ``started`` got a connection; returns when.
        """
        now = time.perf_counter()
        self.pending -= 1
        self.acquire.observe(now - started)
        return now

    def timed_out(self) -> None:
        """
        A wait ran out of time (HikariCP's connection timeout).
        """
        self.pending -= 1
        self.timeouts += 1

    def abandoned(self) -> None:
        """
        A wait ended without a connection for another reason (cancelled, failed).
        """
        self.pending -= 1

    def released(self, held_since: float) -> None:
        """
        A connection acquired at ``held_since`` went back to the pool.
        """
        self.usage.observe(time.perf_counter() - held_since)

    def connected(self, seconds: float) -> None:
        """
        The pool opened a new connection in ``seconds``.
        """
        self.created += 1
        self.creation.observe(seconds)

    # --- read when asked ----------------------------------------------------------

    def states(self) -> dict[str, int]:
        """
        Connections by state: active (in use), idle, pending (tasks waiting), min
        and max; the pool's part is 0 before any pool is watched.
        """
        pool = self._pool
        size = idle = low = high = 0
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            low, high = pool.get_min_size(), pool.get_max_size()
        return {
            "active": size - idle,
            "idle": idle,
            "pending": self.pending,
            "min": low,
            "max": high,
        }

    def figures(self) -> dict[str, int | float]:
        """
        For ``lake status``: the states, timeouts, connections created, and the
        acquire and usage times (mean and p99, ms).
        """
        acquires, uses = self.acquire.count, self.usage.count
        return {
            "pending": self.pending,
            "acquire_timeouts": self.timeouts,
            "created": self.created,
            "acquire_mean_ms": _ms(self.acquire.sum / acquires if acquires else 0.0),
            "acquire_p99_ms": _ms(self.acquire.quantile(0.99)),
            "usage_mean_ms": _ms(self.usage.sum / uses if uses else 0.0),
        }

    def collect(self) -> Iterator[Metric]:
        """
        The ``lake_pool_*`` families.
        """
        gauge = GaugeMetricFamily(
            "lake_pool_connections",
            "PostgreSQL pool connections by state (active, idle, pending, min, max)",
            labels=["state"],
        )
        for state, value in self.states().items():
            gauge.add_metric([state], value)
        yield gauge
        yield histogram_family(
            "lake_pool_acquire_seconds",
            "Time to get a pooled PostgreSQL connection (successful waits)",
            self.acquire,
        )
        yield CounterMetricFamily(
            "lake_pool_acquire_timeouts",
            "Waits for a PostgreSQL connection that ran out of time",
            value=self.timeouts,
        )
        yield histogram_family(
            "lake_pool_usage_seconds",
            "Time a PostgreSQL connection was held, from acquire to release",
            self.usage,
        )
        yield CounterMetricFamily(
            "lake_pool_connections_created",
            "PostgreSQL connections the pool opened",
            value=self.created,
        )
        yield histogram_family(
            "lake_pool_connection_creation_seconds",
            "Time to open one PostgreSQL connection",
            self.creation,
        )


def histogram_family(
    name: str,
    documentation: str,
    histogram: Histogram,
    labels: list[str] | None = None,
    values: list[str] | None = None,
    family: HistogramMetricFamily | None = None,
) -> HistogramMetricFamily:
    """
    ``histogram`` as a Prometheus family (or added to ``family`` under ``values``
    of ``labels``).
    """
    if family is None:
        family = HistogramMetricFamily(name, documentation, labels=labels)
    family.add_metric(
        values or [], list(histogram.cumulative()), sum_value=histogram.sum
    )
    return family


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
