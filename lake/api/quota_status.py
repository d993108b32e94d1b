"""
How a refused quota reaches the client: RESOURCE_EXHAUSTED, a message naming the
quota, and in the trailing metadata the standard rich status
(``grpc-status-details-bin``: a ``google.rpc.Status`` carrying a ``QuotaFailure``
and, when waiting helps, a ``RetryInfo``) plus ``retry-after-ms`` for clients that
read no protobuf details.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lake.errors import QuotaExceededError

__all__ = ["RETRY_AFTER_KEY", "quota_status"]

RETRY_AFTER_KEY = "retry-after-ms"


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def quota_status(exc: QuotaExceededError) -> grpc.Status:
    """
    The status to abort with (``context.abort_with_status``) for ``exc``.
    """
    failure = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"tenant:{exc.tenant}",
                description=str(exc),
                quota_id=exc.quota,
            )
        ]
    )
    details = [_packed(failure)]
    metadata: list[tuple[str, str | bytes]] = []
    if exc.retry_after is not None:
        ms = max(1, math.ceil(exc.retry_after * 1000))
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(ms)
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        metadata.append((RETRY_AFTER_KEY, str(ms)))
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=details
    )
    rich = rpc_status.to_status(status)
    return _Status(rich.code, rich.details, (*rich.trailing_metadata, *metadata))


class _Status(grpc.Status):
    # grpc.Status is an interface; grpc_status's own is private.
    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata
