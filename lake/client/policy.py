"""
The retry policy Lake documents for its clients, in one place.

gRPC retries a call transparently when its service config carries a
``retryPolicy`` and retries are enabled on the channel (gRFC A6). Lake answers
UNAVAILABLE only when trying again may succeed: it is starting or stopping (a
rolling restart), a dependency is momentarily unreachable, or a breaker is open;
with an open breaker it also sends ``grpc-retry-pushback-ms``, which gRPC's retry
obeys instead of its own backoff. Every other status is final: a deadline, a quota
(``RESOURCE_EXHAUSTED``, with ``retry-after-ms`` for the caller to honour) or a
lock wait (``ABORTED``) is never retried by the channel.

Four attempts at most, waiting a random time up to 0.1 s, 0.2 s, 0.4 s (capped at
2 s), all within the call's one deadline. ``RETRY_SERVICE_CONFIG`` is what
``lake.client`` uses; any gRPC client can pass ``service_config_json()`` as the
``grpc.service_config`` channel option with ``grpc.enable_retries`` set to 1.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = [
    "HEALTH_CHECK_CONFIG",
    "RETRY_POLICY",
    "RETRY_SERVICE_CONFIG",
    "channel_options",
    "service_config_json",
]

RETRY_POLICY: Final[dict[str, Any]] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

# ``"name": [{}]`` is the default method config: every method of every service.
RETRY_SERVICE_CONFIG: Final[dict[str, Any]] = {
    "methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}],
}


# Client-side health checking: round robin skips an instance whose ``lake.ready``
# is NOT_SERVING (one that is draining after SIGTERM, or has lost PostgreSQL).
# Without it a rolling restart still failed calls that reached a stopping
# instance (tests/cluster: CANCELLED, not retryable).
HEALTH_CHECK_CONFIG: Final[dict[str, Any]] = {"serviceName": "lake.ready"}


def service_config_json(*, round_robin: bool = False) -> str:
    """
    The service config as JSON; ``round_robin`` spreads calls over every address
    the target resolves to (an ``ipv4:`` list, a ``dns:///`` name), where gRPC's
    default (pick_first) sticks to one, and leaves out instances not ready.
    """
    config: dict[str, Any] = dict(RETRY_SERVICE_CONFIG)
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = HEALTH_CHECK_CONFIG
    return json.dumps(config, separators=(",", ":"))


def channel_options(*, round_robin: bool = False) -> list[tuple[str, Any]]:
    """
    Channel options that turn the documented retry policy on.
    """
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config_json(round_robin=round_robin)),
    ]
