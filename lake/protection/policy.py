"""
Per-dependency protection: one breaker, one retry budget and adaptive timeouts for
each of PostgreSQL, Redis and every mesh peer, held by one ``Protection``.

::

    Protection ─┬─ postgres ─┬─ breaker (CircuitBreaker)
                │            ├─ budget (RetryBudget)
                │            └─ timeouts per operation (AdaptiveTimeout)
                ├─ redis ──── breaker (skips the cache while open)
                ├─ postgres.replica.<n> ─ breaker (a read replica: skipped while open)
                └─ mesh.<peer> ─ breaker, budget, one adaptive timeout

Components call their dependency's ``breaker`` around each call; the manager asks
``may_retry`` before stamina spends a retry and bounds each read attempt with its
adaptive timeout. ``snapshot()`` is what ``lake status`` shows.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from lake.errors import (
    CircuitOpenError,
    MeshUnavailableError,
    StoreUnavailableError,
)
from lake.protection.breaker import BreakerSettings, CircuitBreaker
from lake.protection.budget import BudgetSettings, RetryBudget
from lake.protection.timeouts import AdaptiveTimeout, AttemptWatch, TimeoutSettings

__all__ = ["Dependency", "Protection", "first_attempt", "retrying"]

_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lake_retrying", default=False
)


def first_attempt() -> bool:
    """
    True unless the current call is a retry (it deposits into the retry budget).
    """
    return not _retrying.get()


@contextmanager
def retrying() -> Iterator[None]:
    """
    Mark the calls made within as retries of an earlier attempt.
    """
    token = _retrying.set(True)
    try:
        yield
    finally:
        _retrying.reset(token)


class Dependency:
    """
    The protection of one dependency.
    """

    def __init__(
        self,
        name: str,
        *,
        breaker: BreakerSettings,
        budget: BudgetSettings,
        timeouts: TimeoutSettings,
    ) -> None:
        self.name = name
        self.breaker = CircuitBreaker(name, breaker)
        self.budget = RetryBudget(budget)
        self._timeout_settings = timeouts
        self._timeouts: dict[str, AdaptiveTimeout] = {}

    def timeouts(self, kind: str) -> AdaptiveTimeout:
        """
        The adaptive timeout of one kind of call (an operation, a peer method).
        """
        found = self._timeouts.get(kind)
        if found is None:
            found = self._timeouts[kind] = AdaptiveTimeout(self._timeout_settings)
        return found

    def kinds(self) -> list[tuple[str, AdaptiveTimeout]]:
        """
        The kinds of call with an adaptive timeout so far, by name.
        """
        return sorted(self._timeouts.items())

    def snapshot(self) -> dict[str, object]:
        """
        Breaker, budget and timeouts, for ``lake status``.
        """
        return {
            "breaker": self.breaker.snapshot(),
            **self.budget.snapshot(),
            "timeouts": {k: t.snapshot() for k, t in sorted(self._timeouts.items())},
        }


class Protection:
    """
    Every dependency's protection, per process.

    Args:
        breaker: thresholds of the PostgreSQL and mesh peer breakers.
        redis_breaker: thresholds of the Redis breaker (a cache: quick to skip).
        budget: the retry budget of each dependency.
        timeouts: bounds of the adaptive timeouts of PostgreSQL reads.
        peer_ceiling_s: the ceiling of the mesh calls' adaptive timeouts (their
            other bounds are the reads'); None: the reads' ceiling.
        adaptive: False turns adaptive timeouts off (the caller's deadline alone).
    """

    def __init__(
        self,
        *,
        breaker: BreakerSettings | None = None,
        redis_breaker: BreakerSettings | None = None,
        budget: BudgetSettings | None = None,
        timeouts: TimeoutSettings | None = None,
        peer_ceiling_s: float | None = None,
        adaptive: bool = True,
    ) -> None:
        self._breaker = breaker or BreakerSettings()
        self._budget = budget or BudgetSettings()
        reads = timeouts or TimeoutSettings()
        self._peer_timeouts = (
            reads
            if peer_ceiling_s is None
            else dataclasses.replace(reads, ceiling_s=peer_ceiling_s)
        )
        self.adaptive = adaptive
        self.postgres = Dependency(
            "postgres",
            breaker=self._breaker,
            budget=self._budget,
            timeouts=reads,
        )
        self.redis = Dependency(
            "redis",
            breaker=redis_breaker or BreakerSettings(min_calls=5, open_wait_s=1.0),
            budget=self._budget,
            timeouts=TimeoutSettings(),
        )
        self._peers: dict[str, Dependency] = {}
        self._replicas: dict[str, Dependency] = {}
        # Cuts read attempts that outlive their adaptive timeout.
        self.watch = AttemptWatch()

    def peer(self, name: str) -> Dependency:
        """
        The protection of mesh peer ``name`` (``mesh.<name>``).
        """
        found = self._peers.get(name)
        if found is None:
            found = self._peers[name] = Dependency(
                f"mesh.{name}",
                breaker=self._breaker,
                budget=self._budget,
                timeouts=self._peer_timeouts,
            )
        return found

    def replica(self, name: str) -> Dependency:
        """
        The protection of read replica ``name`` (``postgres.replica.<name>``): the
        primary's breaker thresholds. Its failures never reach a caller (the read
        goes to the primary instead), so it spends no retries.
        """
        found = self._replicas.get(name)
        if found is None:
            found = self._replicas[name] = Dependency(
                f"postgres.replica.{name}",
                breaker=self._breaker,
                budget=self._budget,
                timeouts=self._peer_timeouts,
            )
        return found

    def dependency_of(self, exc: BaseException) -> Dependency | None:
        """
        The dependency whose failure ``exc`` reports, if it is one.
        """
        if isinstance(exc, MeshUnavailableError):
            peer = getattr(exc, "peer", "")
            return self._peers.get(peer) if peer else None
        if isinstance(exc, StoreUnavailableError):
            return self.postgres
        return None

    def may_retry(self, exc: BaseException) -> bool:
        """
        Whether a retry of a call that failed with ``exc`` may be spent.

        Never after an open breaker (it just said the dependency is sick); else as
        the failed dependency's budget allows.
        """
        if isinstance(exc, CircuitOpenError):
            return False
        dependency = self.dependency_of(exc)
        return dependency is None or dependency.budget.try_spend()

    def dependencies(self) -> list[Dependency]:
        """
        PostgreSQL, Redis, the read replicas and the peers called so far.
        """
        return [
            self.postgres,
            self.redis,
            *self._replicas.values(),
            *self._peers.values(),
        ]

    def snapshot(self) -> dict[str, object]:
        """
        Every dependency's figures, by name.
        """
        return {d.name: d.snapshot() for d in self.dependencies()}
