"""
The one mapping from Lake errors to gRPC status codes.
"""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from lake.api.errors import status_of
from lake.errors import (
    AbortedError,
    ConflictError,
    DeadlineExceededError,
    LifecycleError,
    MeshError,
    MeshUnavailableError,
    NotFoundError,
    ResourceExhaustedError,
    StoreError,
    StoreUnavailableError,
    UnsupportedError,
    ValidationError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValidationError("k", "must lie in [1, 10]"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("collection 'x' does not exist"), grpc.StatusCode.NOT_FOUND),
        (ConflictError("exists with another shape"), grpc.StatusCode.ALREADY_EXISTS),
        (AbortedError("gave up waiting for a lock"), grpc.StatusCode.ABORTED),
        (UnsupportedError("pgvector missing"), grpc.StatusCode.FAILED_PRECONDITION),
        (DeadlineExceededError("deadline exceeded"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (StoreUnavailableError("database refused"), grpc.StatusCode.UNAVAILABLE),
        (
            ResourceExhaustedError("no connection free"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (MeshUnavailableError("peer down"), grpc.StatusCode.UNAVAILABLE),
        (LifecycleError("lake is starting"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_lake_errors_map_to_one_code_with_their_message(error, code):
    """Each deliberate failure has one status and keeps its own short message."""
    assert status_of(error) == (code, str(error))


@pytest.mark.parametrize(
    "error",
    [
        StoreError("database error"),
        MeshError("peer cortex failed (INVALID_ARGUMENT)"),
        RuntimeError('SELECT * FROM vectors WHERE password = "hunter2"'),
        KeyError("asyncpg"),
    ],
)
def test_everything_else_is_internal_with_an_error_id_only(error):
    """Unexpected failures give INTERNAL and an id; the text stays in the log."""
    with capture_logs() as logs:
        code, message = status_of(error, "Vectors.Search")
    assert code is grpc.StatusCode.INTERNAL
    assert message.startswith("internal error (error id ")
    error_id = message.removeprefix("internal error (error id ").rstrip(")")
    assert str(error) not in message
    assert any(entry.get("error_id") == error_id for entry in logs)


def test_a_crash_is_logged_without_its_traceback_text():
    """An unexpected error's log line has its kind and where in Lake, never the
    traceback or a library's message (which may quote SQL or values)."""

    def deep() -> None:
        msg = "SELECT secret FROM t WHERE x = 'value'"
        raise KeyError(msg)

    try:
        deep()
    except KeyError as exc:
        with capture_logs() as logs:
            status_of(exc, "Spatial.Nearest")
    (line,) = [e for e in logs if e["event"] == "rpc_crashed"]
    assert line["kind"] == "KeyError"
    assert line["at"].startswith("tests.") or line["at"] == "unknown"
    assert "exc_info" not in line
    assert "secret" not in repr(line)


async def test_an_exhausted_pool_is_not_retried_at_once():
    """RESOURCE_EXHAUSTED is answered after one attempt: retrying would wait on the
    same exhausted pool again (callers heard it after ~3x the acquire timeout)."""
    from lake.resilience import RetryPolicy

    calls = 0

    async def busy() -> None:
        nonlocal calls
        calls += 1
        msg = "no database connection free in time"
        raise ResourceExhaustedError(msg)

    with pytest.raises(ResourceExhaustedError):
        await RetryPolicy(attempts=3, timeout=5.0).run(busy)
    assert calls == 1
