"""
The server span of each call: named ``service/method``, a child of the caller's
``traceparent`` when the call carries one, with the gRPC status code it ended with.

The container puts this interceptor first in the server's list only when tracing
is on (off, it is not there at all). It wraps the handler the rest of the chain
returns, so its span covers admission's, authentication's and metering's work as
well as the servicer's. Health checks and reflection are not traced (a probe every
few seconds would drown the traces). Lake serves no response streams on
``lake.v1``; a method with one passes untraced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import SpanKind, Tracer

from lake.api.wrapped import Layer
from lake.tracing import extract_parent, failed

__all__ = ["TracingInterceptor"]

if TYPE_CHECKING:
    _Context = grpc.aio.ServicerContext[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Context = grpc.aio.ServicerContext

_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The codes that mean the server failed (OpenTelemetry's rule for server spans);
# others (INVALID_ARGUMENT, NOT_FOUND, ...) are the caller's and leave it unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _code(context: _Context, exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code: Any = context.code()  # None until set; grpc's stubs say otherwise
    if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.UNKNOWN


class TracingInterceptor(Layer):
    """
    One SERVER span per call of a traced method, from ``tracer``.
    """

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self._tracer = tracer
        # Span name and attributes per method.
        self._methods: dict[str, tuple[str, dict[str, str]]] = {}

    def wrap(self, handler: Any, method: str) -> Any:
        if method.startswith(_UNTRACED):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=self._traced(handler.unary_unary, method)
            )
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=self._traced(handler.stream_unary, method)
            )
        return handler

    def _describe(self, method: str) -> tuple[str, dict[str, str]]:
        found = self._methods.get(method)
        if found is None:
            name = method.lstrip("/")
            service, _, rpc = name.partition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": rpc,
            }
            found = self._methods[method] = (name, attributes)
        return found

    def _traced(
        self, behavior: Callable[[Any, _Context], Awaitable[Any]], method: str
    ) -> Callable[[Any, _Context], Awaitable[Any]]:
        name, attributes = self._describe(method)
        tracer = self._tracer

        async def traced(request: Any, context: _Context) -> Any:
            parent = extract_parent(context.invocation_metadata())
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    code = _code(context, exc)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code in _SERVER_ERRORS:
                        failed(span, code.name)
                    raise
                span.set_attribute("rpc.grpc.status_code", 0)
                return response

        return traced
