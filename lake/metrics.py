"""
Lake's Prometheus metrics: figures read from the components when scraped.

Nothing here runs on the request path. Each *source* is an object with a
``collect()`` that yields prometheus-client metric families built from figures its
component keeps anyway (``OperationMetrics``, ``PoolMetrics``, the cache's
counters, the loop-lag sampler); a source may also have an ``async refresh()``,
awaited (time-boxed) before each scrape, for a figure that needs a query (the
event backlog). ``MetricsRegistry.exposition()`` renders them in the format the
scraper asks for; ``lake.metricserver`` serves it at ``/metrics``.

Adding a family: give the component, or a small adapter over it, a ``collect()``
(as ``lake.protection.metrics.ProtectionSource`` does for breakers and retries)::

    class BreakerSource:
        def __init__(self, breakers: Breakers) -> None:
            self._breakers = breakers

        def collect(self) -> Iterator[Metric]:
            state = GaugeMetricFamily(
                "lake_breaker_state", "0 closed, 1 half-open, 2 open",
                labels=["dependency"],
            )
            for name, breaker in self._breakers.items():
                state.add_metric([name], breaker.state_number)
            yield state

and add its provider to ``metrics_sources`` in ``lake/container.py``. Counters are
totals since start (name the family without ``_total``: prometheus-client adds
it). Keep labels to a few known values: never a tenant, key or error text.

With several worker processes (``grpc.workers`` > 1) only worker 0 listens; the
others publish their families every second to the status board (``lake.workerstatus``)
and worker 0 adds them to its own when scraped: counters and histograms are summed,
gauges summed too unless ``GAUGE_MERGE`` says otherwise (loop lag: the worst).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from lake.lag import LoopLag
from lake.ports import Components
from lake.workers import LoopWorker
from lake.workerstatus import StatusBoard

__all__ = [
    "GAUGE_MERGE",
    "CacheSource",
    "EventsSource",
    "LoopLagSource",
    "MetricsPublisher",
    "MetricsRegistry",
    "Refreshing",
    "ReplicaSource",
    "Source",
    "families_from_json",
    "families_to_json",
    "merge_families",
    "process_source",
]

log = structlog.get_logger(__name__)

# How worker processes' gauges combine (the default is their sum).
GAUGE_MERGE: dict[str, Callable[[list[float]], float]] = {
    "lake_event_loop_lag_seconds": max,
    "lake_breaker_state": max,  # the worst worker's breaker
    "lake_attempt_timeout_seconds": max,
    "lake_events_pending": max,  # one figure of the database: worker 0 reads it
    "lake_replica_lag_seconds": max,  # the replica's lag as the worst worker saw it
    "lake_replica_in_rotation": min,  # out if any worker took it out
    "process_start_time_seconds": min,
    "process_max_fds": min,
}


class Source(Protocol):
    """
    Anything that yields metric families when scraped.
    """

    def collect(self) -> Iterable[Metric]:
        """
        The families, built from figures kept anyway.
        """


@runtime_checkable
class Refreshing(Protocol):
    """
    A source with a figure read on demand, before each scrape.
    """

    async def refresh(self) -> None:
        """
        Read the figure now.
        """


class _Families(Collector):
    # What prometheus-client's encoders take: an object with collect().
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class MetricsRegistry:
    """
    The sources of one process, rendered together (with the other workers'
    figures when ``board`` is shared).

    Args:
        sources: objects with ``collect()`` (and optionally ``async refresh()``).
        board: the worker processes' status board; only the listening worker
            reads the others' figures from it.
        refresh_timeout: time box for each source's ``refresh()``, in seconds.
    """

    def __init__(
        self,
        sources: Sequence[Source] = (),
        *,
        board: StatusBoard | None = None,
        refresh_timeout: float = 1.0,
    ) -> None:
        self._sources: list[Source] = list(sources)
        self._board = board
        self._refresh_timeout = refresh_timeout

    def register(self, source: Source) -> None:
        """
        Add ``source`` (see the module docstring).
        """
        self._sources.append(source)

    def collect(self) -> list[Metric]:
        """
        This process's families; a source that fails is left out and logged.
        """
        families: list[Metric] = []
        for source in self._sources:
            try:
                families.extend(source.collect())
            except Exception as exc:  # one broken source must not blank the rest
                log.warning(
                    "metrics_source_failed",
                    source=type(source).__name__,
                    kind=type(exc).__name__,
                )
        return families

    async def refresh(self) -> None:
        """
        Let the sources that read something on demand do it, each time-boxed.
        """
        refreshing = [s.refresh for s in self._sources if isinstance(s, Refreshing)]
        if refreshing:
            await asyncio.gather(*(self._refresh(r) for r in refreshing))

    async def _refresh(self, refresh: Callable[[], Any]) -> None:
        try:
            async with asyncio.timeout(self._refresh_timeout):
                await refresh()
        except Exception as exc:  # the figure goes missing from this scrape only
            log.info("metrics_refresh_failed", kind=type(exc).__name__)

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """
        Every family in the format ``accept`` asks for (Prometheus text by
        default, OpenMetrics on request): the body and its content type.
        """
        await self.refresh()
        families = self.collect()
        if self._board is not None and self._board.shared:
            others = [families_from_json(o) for o in self._board.others("metrics")]
            families = merge_families([families, *others])
        encoder, content_type = choose_encoder(accept)
        return encoder(_Families(families)), content_type


class MetricsPublisher(LoopWorker):
    """
    Writes this worker's families to the board every ``interval`` seconds, for
    the listening worker to add up.
    """

    name = "metrics-publisher"

    def __init__(
        self, board: StatusBoard, registry: MetricsRegistry, *, interval: float = 1.0
    ) -> None:
        super().__init__()
        self._board = board
        self._registry = registry
        self._interval = interval

    async def run(self) -> None:
        """
        Publish until cancelled; a failed write is logged and tried again.
        """
        while True:
            try:
                families = self._registry.collect()
                self._board.publish(families_to_json(families), kind="metrics")
            except OSError as exc:
                log.warning("metrics_publish_failed", reason=exc.strerror or "io")
            await asyncio.sleep(self._interval)


# --- sources over figures kept elsewhere -----------------------------------------


class Running(Protocol):
    """
    The manager, as far as the sources need it.
    """

    @property
    def components(self) -> Components | None:
        """
        The running components, or None.
        """


class CacheSource:
    """
    ``lake_cache_requests_total{result}`` and ``lake_redis_connections{state}``
    from the cache's own counters, while running.
    """

    def __init__(self, manager: Running) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        """
        The cache families (empty ones before start).
        """
        requests = CounterMetricFamily(
            "lake_cache_requests",
            "Cached reads by result: hit, miss, bypass (route not worth caching),"
            " error (Redis failed or an entry was unreadable), busy (pool full)",
            labels=["result"],
        )
        connections = GaugeMetricFamily(
            "lake_redis_connections",
            "Redis pool connections: in_use, available (idle), max",
            labels=["state"],
        )
        c = self._manager.components
        if c is not None:
            stats = c.cache.stats()
            routes = stats.get("routes", {})
            bypassed = sum(r.get("bypassed", 0) for r in routes.values())
            for result, key in (("hit", "hits"), ("miss", "misses")):
                requests.add_metric([result], stats.get(key, 0))
            requests.add_metric(["bypass"], bypassed)
            requests.add_metric(["error"], stats.get("errors", 0))
            requests.add_metric(["busy"], stats.get("busy", 0))
            for state, n in stats.get("connections", {}).items():
                connections.add_metric([state], n)
        yield requests
        yield connections


class ReplicaSource:
    """
    ``lake_replica_lag_seconds{replica}``, ``lake_replica_in_rotation{replica}``
    and ``lake_read_routes_total{route}`` (where routed reads went: ``replica``,
    or the primary for a ``recent_write``, ``no_replica`` in rotation, or a
    ``fallback`` after a replica failed), while running with read replicas.
    """

    def __init__(self, manager: Running) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        """
        The replica families (empty without replicas).
        """
        lag = GaugeMetricFamily(
            "lake_replica_lag_seconds",
            "How long ago the primary was at the WAL position the replica replayed",
            labels=["replica"],
        )
        rotation = GaugeMetricFamily(
            "lake_replica_in_rotation",
            "1 while the replica serves reads, 0 while out (down, lagging)",
            labels=["replica"],
        )
        routes = CounterMetricFamily(
            "lake_read_routes",
            "Reads loaded with replicas configured, by where they ran: replica, or"
            " the primary for a recent_write, no_replica or a fallback",
            labels=["route"],
        )
        c = self._manager.components
        if c is not None and c.replicas is not None:
            stats = c.replicas.stats()
            for route, n in stats.get("routed", {}).items():
                routes.add_metric([route], n)
            for name, node in stats.get("nodes", {}).items():
                rotation.add_metric([name], node.get("in_rotation", 0))
                if node.get("lag_ms") is not None:
                    lag.add_metric([name], node["lag_ms"] / 1000.0)
        yield lag
        yield rotation
        yield routes


class EventsSource:
    """
    ``lake_events_pending``: change events waiting for delivery, counted in
    PostgreSQL when scraped (a figure of the database, not of this process).
    """

    def __init__(self, manager: Running) -> None:
        self._manager = manager
        self._pending: int | None = None

    async def refresh(self) -> None:
        """
        Count the backlog now (None while not running or when the count fails).
        """
        self._pending = None
        c = self._manager.components
        if c is not None:
            self._pending = await c.relay.backlog()

    def collect(self) -> Iterator[Metric]:
        """
        The backlog as of the last refresh (no sample when unknown).
        """
        family = GaugeMetricFamily(
            "lake_events_pending", "Change events waiting for delivery to the stream"
        )
        if self._pending is not None:
            family.add_metric([], self._pending)
        yield family


class LoopLagSource:
    """
    ``lake_event_loop_lag_seconds``: the worst lag of the sampler's window.
    """

    def __init__(self, lag: LoopLag) -> None:
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        """
        The worst lag of the last few seconds.
        """
        yield GaugeMetricFamily(
            "lake_event_loop_lag_seconds",
            "Worst event-loop lag of the last 5 s",
            value=self._lag.worst_ms() / 1000.0,
        )


def process_source() -> Source:
    """
    prometheus-client's ``process_*`` families (CPU seconds, memory, open files),
    not registered in its global registry.
    """
    return ProcessCollector(registry=None)


# --- across worker processes ---------------------------------------------------


def families_to_json(families: Iterable[Metric]) -> list[dict[str, Any]]:
    """
    ``families`` as plain JSON values (for the status board).
    """
    return [
        {
            "name": f.name,
            "documentation": f.documentation,
            "type": f.type,
            "unit": f.unit,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
        for f in families
    ]


def families_from_json(data: Any) -> list[Metric]:
    """
    The families ``families_to_json`` wrote (nothing from a malformed file).
    """
    families: list[Metric] = []
    with contextlib.suppress(KeyError, TypeError, ValueError):
        for item in data:
            family = Metric(
                item["name"], item["documentation"], item["type"], item["unit"]
            )
            for name, labels, value in item["samples"]:
                family.add_sample(name, dict(labels), float(value))
            families.append(family)
    return families


def merge_families(processes: list[list[Metric]]) -> list[Metric]:
    """
    One process's families from several: same name and labels combined, summed
    unless ``GAUGE_MERGE`` names another rule for a gauge; the first process's
    order and help text.
    """
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for families in processes:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                into.setdefault(key, []).append(sample.value)
    for name, family in merged.items():
        rule = GAUGE_MERGE.get(name, sum) if family.type == "gauge" else sum
        for (sample_name, labels), found in values[name].items():
            family.add_sample(sample_name, dict(labels), float(rule(found)))
    return list(merged.values())
