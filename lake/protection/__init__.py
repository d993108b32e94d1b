"""
Protection of Lake's dependencies: circuit breakers, retry budgets, adaptive
timeouts and a fair-share bulkhead (see the README's "Resilience" section).
"""

from lake.protection.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Outcome,
)
from lake.protection.budget import BudgetSettings, RetryBudget
from lake.protection.fairshare import FairGate, GateSettings
from lake.protection.policy import Dependency, Protection, first_attempt, retrying
from lake.protection.timeouts import AdaptiveTimeout, AttemptWatch, TimeoutSettings

__all__ = [
    "AdaptiveTimeout",
    "AttemptWatch",
    "BreakerSettings",
    "BreakerState",
    "BudgetSettings",
    "CircuitBreaker",
    "Dependency",
    "FairGate",
    "GateSettings",
    "Outcome",
    "Protection",
    "RetryBudget",
    "TimeoutSettings",
    "first_attempt",
    "retrying",
]
