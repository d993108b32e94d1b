"""
Usage counters: calls, failures by kind and latency per operation kind.

The manager records every operation here; ``lake status`` shows the figures.
Holds no tenant data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OperationStats", "Usage"]


@dataclass(slots=True)
class OperationStats:
    """
    Usage of one operation kind: calls, failures by error, total latency.
    """

    calls: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    total_ms: float = 0.0


class Usage:
    """
    Per-operation usage since start.
    """

    def __init__(self) -> None:
        self.operations: dict[str, OperationStats] = {}

    def record(self, operation: str, took_ms: float, failure: str | None) -> None:
        """
        Count one call of ``operation``; ``failure`` names the kind of error, if any.
        """
        stats = self.operations.get(operation)
        if stats is None:
            stats = self.operations[operation] = OperationStats()
        stats.calls += 1
        stats.total_ms += took_ms
        if failure is not None:
            stats.failures[failure] += 1

    def report(self) -> dict[str, Any]:
        """
        Calls, failures and mean latency per operation, for operators.
        """
        return {
            name: {
                "calls": s.calls,
                "failures": dict(s.failures),
                "mean_ms": round(s.total_ms / s.calls, 3) if s.calls else 0.0,
            }
            for name, s in self.operations.items()
        }
