"""
The one mapping from Lake errors to gRPC status codes.
"""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from lake.api.errors import status_of
from lake.errors import (
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
