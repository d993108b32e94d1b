"""
Prometheus families of the protection layer, read from it when scraped.

``lake_breaker_state{dependency}`` (0 closed, 1 half-open, 2 open),
``lake_breaker_transitions_total{dependency,to}``,
``lake_breaker_rejected_total{dependency}``, ``lake_retries_total{dependency}``,
``lake_retries_denied_total{dependency}``,
``lake_attempt_timeout_seconds{dependency,kind}`` (the adaptive timeout now),
``lake_attempt_timeouts_total{dependency,kind}`` and
``lake_pool_shed_total`` (calls the fair-share gate refused).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lake.protection.breaker import BreakerState
from lake.protection.fairshare import FairGate
from lake.protection.policy import Protection

__all__ = ["ProtectionSource"]

_STATE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ProtectionSource:
    """
    The breakers, retry budgets, adaptive timeouts and the pool's gate.
    """

    def __init__(self, protection: Protection, gate: FairGate | None = None) -> None:
        self._protection = protection
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        """
        One family per figure, a sample per dependency.
        """
        state = GaugeMetricFamily(
            "lake_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["dependency"],
        )
        moves = CounterMetricFamily(
            "lake_breaker_transitions",
            "Circuit breaker transitions, by the state entered",
            labels=["dependency", "to"],
        )
        rejected = CounterMetricFamily(
            "lake_breaker_rejected",
            "Calls refused at once by an open breaker",
            labels=["dependency"],
        )
        retries = CounterMetricFamily(
            "lake_retries", "Retries spent from the budget", labels=["dependency"]
        )
        denied = CounterMetricFamily(
            "lake_retries_denied",
            "Retries the budget (or the deadline) did not allow",
            labels=["dependency"],
        )
        timeout = GaugeMetricFamily(
            "lake_attempt_timeout_seconds",
            "The adaptive attempt timeout now",
            labels=["dependency", "kind"],
        )
        fired = CounterMetricFamily(
            "lake_attempt_timeouts",
            "Attempts cut by their adaptive timeout",
            labels=["dependency", "kind"],
        )
        for dep in self._protection.dependencies():
            b = dep.breaker
            state.add_metric([dep.name], _STATE[b.state])
            entered: dict[str, int] = {}
            for move, n in b.transitions.items():
                to = move.split("->", 1)[1]
                entered[to] = entered.get(to, 0) + n
            for to, n in sorted(entered.items()):
                moves.add_metric([dep.name, to], n)
            rejected.add_metric([dep.name], b.rejected)
            retries.add_metric([dep.name], dep.budget.spent)
            denied.add_metric([dep.name], dep.budget.denied)
            for kind, t in dep.kinds():
                timeout.add_metric([dep.name, kind], t.timeout(None))
                fired.add_metric([dep.name, kind], t.timeouts)
        yield from (state, moves, rejected, retries, denied, timeout, fired)
        shed = CounterMetricFamily(
            "lake_pool_shed", "Calls the pool's fair-share gate refused at once"
        )
        shed.add_metric([], 0 if self._gate is None else self._gate.rejected)
        yield shed
