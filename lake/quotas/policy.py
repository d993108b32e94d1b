"""
QuotaBook: the quotas in force, per tenant (defaults from ``quotas.default``, with
the overrides read from ``tenant_quotas``); 0 means unlimited. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CAP_NAMES",
    "QUOTA_NAMES",
    "RATE_NAMES",
    "UNLIMITED",
    "Caps",
    "QuotaBook",
]

RATE_NAMES = ("read_per_s", "write_per_s", "search_per_s", "text_per_s")
CAP_NAMES = ("max_collections", "max_vectors", "max_features", "max_points_per_day")
QUOTA_NAMES = RATE_NAMES + CAP_NAMES
# Operation class -> its rate quota ("read" -> "read_per_s"), built once.
_RATE_OF = {name.removesuffix("_per_s"): name for name in RATE_NAMES}


@dataclass(frozen=True, slots=True)
class Caps:
    """
    A tenant's storage caps (0: unlimited).
    """

    collections: int = 0
    vectors: int = 0
    features: int = 0
    points_per_day: int = 0


UNLIMITED = Caps()


class QuotaBook:
    """
    Defaults and per-tenant overrides; ``replace()`` swaps the overrides whole.

    Args:
        defaults: ``quotas.default`` (names in ``QUOTA_NAMES``; missing ones are 0).
    """

    def __init__(self, defaults: Mapping[str, float]) -> None:
        self.defaults = {
            name: float(defaults.get(name, 0) or 0) for name in QUOTA_NAMES
        }
        self._overrides: dict[str, dict[str, float]] = {}
        self._caps: dict[str, Caps] = {}
        self._default_caps = self._build_caps(self.defaults)
        self.limited = any(self.defaults[n] for n in RATE_NAMES)

    @property
    def overrides(self) -> Mapping[str, Mapping[str, float]]:
        """
        The per-tenant overrides last read.
        """
        return self._overrides

    def replace(self, overrides: Mapping[str, Mapping[str, float]]) -> None:
        """
        Put ``overrides`` (tenant -> name -> value) in force.
        """
        self._overrides = {t: dict(v) for t, v in overrides.items()}
        self._caps = {t: self._build_caps(self.effective(t)) for t in self._overrides}
        self.limited = any(self.defaults[n] for n in RATE_NAMES) or any(
            v.get(n) for v in self._overrides.values() for n in RATE_NAMES
        )

    def rate(self, tenant: str, operation_class: str) -> float:
        """
        Calls per second ``tenant`` may make of ``operation_class`` (0: unlimited).
        """
        name = _RATE_OF[operation_class]
        own = self._overrides.get(tenant)
        if own is not None and name in own:
            return own[name]
        return self.defaults[name]

    def caps(self, tenant: str) -> Caps:
        """
        ``tenant``'s storage caps.
        """
        return self._caps.get(tenant, self._default_caps)

    def effective(self, tenant: str) -> dict[str, float]:
        """
        Every quota of ``tenant``: its overrides over the defaults.
        """
        return {**self.defaults, **self._overrides.get(tenant, {})}

    @staticmethod
    def _build_caps(values: Mapping[str, float]) -> Caps:
        return Caps(
            collections=int(values["max_collections"]),
            vectors=int(values["max_vectors"]),
            features=int(values["max_features"]),
            points_per_day=int(values["max_points_per_day"]),
        )
