"""
The one mapping from Lake's errors to gRPC status codes.

Clients get a short message of Lake's own; anything unexpected is INTERNAL with an
error id that names the log line holding the details, never the exception text,
SQL, driver names or a stack.
"""

from __future__ import annotations

import uuid

import grpc
import structlog

from lake.errors import (
    AbortedError,
    ConflictError,
    DeadlineExceededError,
    LakeError,
    LifecycleError,
    NotFoundError,
    ResourceExhaustedError,
    TransientError,
    UnsupportedError,
    ValidationError,
)

__all__ = ["pushback", "status_of"]

log = structlog.get_logger(__name__)

_CODES: list[tuple[type[LakeError], grpc.StatusCode]] = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (AbortedError, grpc.StatusCode.ABORTED),
    (UnsupportedError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
    # Starting or stopping: the call may succeed on another try or instance.
    (LifecycleError, grpc.StatusCode.UNAVAILABLE),
]


def _kind(exc: BaseException) -> str:
    module = type(exc).__module__
    if module == "builtins" or module.startswith("lake"):
        return type(exc).__qualname__
    return "library error"  # a driver's or library's class name stays out


def _where(exc: BaseException) -> str:
    """
    The innermost frame of Lake's own code in the traceback, as ``module:line``.
    """
    found = "unknown"
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(name, str) and name.startswith("lake"):
            found = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def status_of(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """
    The status and client-safe message for ``exc``.

    An error carrying a ``detail`` (the SQLSTATE of a statement the database refused,
    say) is logged with it, so the operator can tell what the server refused.
    """
    for kind, code in _CODES:
        if isinstance(exc, kind):
            if exc.detail:
                log.warning(
                    "rpc_refused", method=method, reason=str(exc), detail=exc.detail
                )
            return code, str(exc)
    error_id = uuid.uuid4().hex[:12]
    if isinstance(exc, LakeError):
        log.error(
            "rpc_failed",
            method=method,
            error_id=error_id,
            reason=str(exc),
            detail=exc.detail,
        )
    else:
        # No traceback text (it may quote SQL, values or driver internals): the
        # exception's kind and where in Lake it was raised, enough to find the bug.
        log.error(
            "rpc_crashed",
            method=method,
            error_id=error_id,
            kind=_kind(exc),
            at=_where(exc),
        )
    return grpc.StatusCode.INTERNAL, f"internal error (error id {error_id})"


def pushback(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """
    Trailing metadata telling the client when to try again, for an error that says
    (an open breaker, a shed call): ``grpc-retry-pushback-ms`` (gRFC A6), which
    grpc clients with a retry policy obey, and ``retry-after-ms`` for others.
    """
    after = getattr(exc, "retry_after_s", None)
    if after is None:
        return ()
    ms = str(max(1, round(after * 1000)))
    return (("grpc-retry-pushback-ms", ms), ("retry-after-ms", ms))
