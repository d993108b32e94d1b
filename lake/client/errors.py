"""
gRPC statuses back into Lake's exception classes (``lake.errors``), the inverse of
the server's table in ``lake.api.errors``.

Each raised error keeps the gRPC error it came from as ``__cause__``;
``status_name`` and ``status_details`` read them back (the ``lake`` command prints
them as the server sent them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from lake.errors import (
    AbortedError,
    CircuitOpenError,
    ClientError,
    ConflictError,
    DeadlineExceededError,
    LakeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedError,
    ValidationError,
)

__all__ = ["error_of", "status_details", "status_name"]

PUSHBACK_KEY = "grpc-retry-pushback-ms"
RETRY_AFTER_KEY = "retry-after-ms"
DETAILS_KEY = "grpc-status-details-bin"

# The server's own wording (lake.errors): parsed when the rich details are absent.
_QUOTA = re.compile(r"^quota (?P<quota>\S+) exceeded for tenant (?P<tenant>\S+)$")
_CIRCUIT = re.compile(r"^(?P<dependency>.+) is unavailable \(circuit open\)$")
# A validation message is "field: problem"; a field is a path like items[3].values.
_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]]*): (?P<problem>.+)$", re.DOTALL)

Metadata = Sequence[tuple[str, str | bytes]]


def _value(metadata: Metadata, key: str) -> str | bytes | None:
    for name, value in metadata:
        if name == key:
            return value
    return None


def _seconds_ms(metadata: Metadata, key: str) -> float | None:
    value = _value(metadata, key)
    if value is None:
        return None
    try:
        return max(0.0, int(value) / 1000)
    except ValueError:
        return None


def _validation(message: str) -> ValidationError:
    found = _FIELD.match(message)
    if found is None:
        return ValidationError("request", message)
    return ValidationError(found["field"], found["problem"])


def _quota_details(metadata: Metadata) -> tuple[str, str, float | None] | None:
    """
    (quota, tenant, retry after) from the rich status, when grpcio-status (with
    googleapis-common-protos) is installed and the server sent a QuotaFailure.
    """
    raw = _value(metadata, DETAILS_KEY)
    if not isinstance(raw, bytes):
        return None
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return None
    status = status_pb2.Status.FromString(raw)
    found: tuple[str, str] | None = None
    retry_after: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            for v in failure.violations:
                found = (v.quota_id, v.subject.removeprefix("tenant:"))
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToTimedelta().total_seconds()
    return None if found is None else (*found, retry_after)


def _exhausted(message: str, metadata: Metadata) -> ResourceExhaustedError:
    found = _quota_details(metadata)
    if found is None:
        parsed = _QUOTA.match(message)
        if parsed is None:
            return ResourceExhaustedError(message)
        after = _seconds_ms(metadata, RETRY_AFTER_KEY)
        found = (parsed["quota"], parsed["tenant"], after)
    quota, tenant, retry_after = found
    error = QuotaExceededError(quota, tenant, retry_after)
    error.args = (message,)  # str() is what the server said
    return error


def _unavailable(message: str, metadata: Metadata) -> LakeError:
    after = _seconds_ms(metadata, PUSHBACK_KEY)
    parsed = _CIRCUIT.match(message)
    if parsed is not None:
        return CircuitOpenError(parsed["dependency"], after or 0.0)
    error = UnavailableError(message)
    if after is not None:
        error.after(after)
    return error


_Maker = Callable[[str, Metadata], LakeError]
_MAKERS: dict[grpc.StatusCode, _Maker] = {
    grpc.StatusCode.INVALID_ARGUMENT: lambda m, _: _validation(m),
    grpc.StatusCode.NOT_FOUND: lambda m, _: NotFoundError(m),
    grpc.StatusCode.ALREADY_EXISTS: lambda m, _: ConflictError(m),
    grpc.StatusCode.FAILED_PRECONDITION: lambda m, _: UnsupportedError(m),
    grpc.StatusCode.DEADLINE_EXCEEDED: lambda m, _: DeadlineExceededError(m),
    grpc.StatusCode.RESOURCE_EXHAUSTED: _exhausted,
    grpc.StatusCode.UNAVAILABLE: _unavailable,
    grpc.StatusCode.ABORTED: lambda m, _: AbortedError(m),
    grpc.StatusCode.UNAUTHENTICATED: lambda m, _: UnauthenticatedError(m),
    grpc.StatusCode.PERMISSION_DENIED: lambda m, _: PermissionDeniedError(m),
}


def error_of(exc: grpc.RpcError) -> LakeError:
    """
    The Lake error for a failed call (sync ``grpc.RpcError`` or ``AioRpcError``),
    with ``exc`` as its ``__cause__``.
    """
    call: Any = exc  # both kinds carry code(), details(), trailing_metadata()
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    metadata: Metadata = tuple(call.trailing_metadata() or ())
    maker = _MAKERS.get(code)
    error = maker(message, metadata) if maker else ClientError(code.name, message)
    error.__cause__ = exc
    return error


def status_name(error: BaseException) -> str:
    """
    The gRPC status name ``error`` was raised for (``NOT_FOUND``), or ``""``.
    """
    cause: Any = error.__cause__
    if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
        return str(cause.code().name)
    return ""


def status_details(error: BaseException) -> str:
    """
    The message the server sent with the status, as it sent it.
    """
    cause: Any = error.__cause__
    if isinstance(cause, grpc.RpcError) and hasattr(cause, "details"):
        return str(cause.details() or "")
    return str(error)
