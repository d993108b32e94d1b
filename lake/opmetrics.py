"""
Operation counts by status code and duration histograms, recorded by the manager.

``record()`` runs once per operation on the event loop: two dict look-ups, one
tuple and one histogram bucket (about half a µs; ``bench/metrics_cost.py`` prints
it). ``collect()`` builds ``lake_operations_total{operation,code}`` and
``lake_operation_duration_seconds{operation}`` only when scraped.

The ``code`` label is the gRPC status the API answers with, derived from the
manager's failure kind (``lake.manager._FAILURE_KINDS``; the API's table is
``lake.api.errors``; a unit test keeps the three in step). Tenants get a label only
when named in ``metrics.tenant_labels``: every other tenant's calls count under
``tenant=""``, which Prometheus reads as no label, so the series stay few.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from lake.histogram import DURATION_BUCKETS, Histogram
from lake.poolmetrics import histogram_family

__all__ = ["CODES", "OperationMetrics", "QuotaRejections"]

# Failure kind (lake.manager) -> gRPC status code name; None is success.
CODES: dict[str | None, str] = {
    None: "OK",
    "invalid_argument": "INVALID_ARGUMENT",
    "not_found": "NOT_FOUND",
    "conflict": "ALREADY_EXISTS",
    "aborted": "ABORTED",
    "unsupported": "FAILED_PRECONDITION",
    "deadline_exceeded": "DEADLINE_EXCEEDED",
    "resource_exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "cancelled": "CANCELLED",
    "internal": "INTERNAL",
}


class _Operation:
    __slots__ = ("calls", "duration")

    def __init__(self) -> None:
        # (code, tenant label) -> calls
        self.calls: dict[tuple[str, str], int] = {}
        self.duration = Histogram(DURATION_BUCKETS)


class OperationMetrics:
    """
    Calls per operation, status code (and allowed tenant), and their durations.

    Args:
        tenant_labels: tenants whose calls are counted under their own label.
    """

    def __init__(self, tenant_labels: Iterable[str] = ()) -> None:
        self._tenants = frozenset(tenant_labels)
        self._operations: dict[str, _Operation] = {}

    def record(
        self, operation: str, tenant: str, seconds: float, failure: str | None
    ) -> None:
        """
        Count one call of ``operation`` that took ``seconds`` and ended in
        ``failure`` (a failure kind, None for success).
        """
        op = self._operations.get(operation)
        if op is None:
            op = self._operations[operation] = _Operation()
        key = (
            CODES.get(failure, "INTERNAL"),
            tenant if tenant in self._tenants else "",
        )
        op.calls[key] = op.calls.get(key, 0) + 1
        op.duration.observe(seconds)

    def calls(self, operation: str, code: str = "OK") -> int:
        """
        Calls of ``operation`` that ended with ``code``, all tenants together.
        """
        op = self._operations.get(operation)
        if op is None:
            return 0
        return sum(n for (c, _), n in op.calls.items() if c == code)

    def collect(self) -> Iterator[Metric]:
        """
        The ``lake_operations_total`` and ``lake_operation_duration_seconds``
        families.
        """
        labels = ["operation", "code"] + (["tenant"] if self._tenants else [])
        calls = CounterMetricFamily(
            "lake_operations",
            "Operations by name and the gRPC status code they ended with",
            labels=labels,
        )
        durations = HistogramMetricFamily(
            "lake_operation_duration_seconds",
            "Time an operation took in the manager, retries included",
            labels=["operation"],
        )
        for name, op in list(self._operations.items()):
            for (code, tenant), n in list(op.calls.items()):
                values = [name, code] + ([tenant] if self._tenants else [])
                calls.add_metric(values, n)
            histogram_family("", "", op.duration, values=[name], family=durations)
        yield calls
        yield durations


class QuotaRejections:
    """
    Calls refused by a quota, by the quota's name (``read_per_s``,
    ``max_vectors``, ...); the quota layer calls ``rejected()``.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def rejected(self, quota: str) -> None:
        """
        Count one call refused by ``quota``.
        """
        self.counts[quota] = self.counts.get(quota, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """
        The ``lake_quota_rejections_total`` family.
        """
        family = CounterMetricFamily(
            "lake_quota_rejections",
            "Calls refused by a per-tenant quota, by quota",
            labels=["quota"],
        )
        for quota, n in list(self.counts.items()):
            family.add_metric([quota], n)
        yield family
