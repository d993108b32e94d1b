"""
Undecodable request bodies answer INVALID_ARGUMENT, not UNKNOWN.

grpcio deserialises a request before any handler runs; when that raises, it answers
UNKNOWN with the exception's text (a Python class name and the parser's complaint).
``DecodeGuard`` wraps every handler's ``request_deserializer`` so a body that does not
decode becomes a sentinel, and the wrapped behaviour aborts with INVALID_ARGUMENT and
a fixed message. Request streams are guarded message by message: a bad message ends
the call the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from lake.api.wrapped import Layer
from lake.errors import UndecodableRequestError

__all__ = ["DecodeGuard"]

log = structlog.get_logger(__name__)

_UNDECODABLE = object()  # what a guarded deserializer returns for a bad body


Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


class DecodeGuard(Layer):
    """
    Answers INVALID_ARGUMENT, without the parser's text, to a body that does not decode.
    """

    def wrap(self, handler: Any, method: str) -> Any:
        if handler.request_deserializer is None:
            return handler
        return _guard(handler, method)


def _guard(handler: Any, method: str) -> Any:
    inner = handler.request_deserializer

    def deserialize(body: bytes) -> Any:
        try:
            return inner(body)
        except Exception:
            # Debug only: this runs before authentication, so anyone could flood it.
            log.debug("request_undecodable", method=method, size=len(body))
            return _UNDECODABLE

    changes: dict[str, Any] = {"request_deserializer": deserialize}
    if handler.unary_unary is not None:
        changes["unary_unary"] = _unary_request(handler.unary_unary)
    elif handler.unary_stream is not None:
        changes["unary_stream"] = _unary_request(handler.unary_stream)
    elif handler.stream_unary is not None:
        changes["stream_unary"] = _stream_request(handler.stream_unary)
    elif handler.stream_stream is not None:
        changes["stream_stream"] = _stream_request(handler.stream_stream)
    return handler._replace(**changes)


async def _refuse(context: Context) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, str(UndecodableRequestError())
    )


def _unary_request(behavior: Behavior) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def streams(request: Any, context: Context) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await _refuse(context)
            async for response in behavior(request, context):
                yield response

        return streams

    async def answers(request: Any, context: Context) -> Any:
        if request is _UNDECODABLE:
            await _refuse(context)
        return await behavior(request, context)

    return answers


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise UndecodableRequestError
        yield request


def _stream_request(behavior: Behavior) -> Behavior:
    # Lake's servicers map UndecodableRequestError themselves (it is a validation
    # error); other services (reflection) let it through to here.
    if inspect.isasyncgenfunction(behavior):

        async def streams(requests: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(_checked(requests), context):
                    yield response
            except UndecodableRequestError:
                await _refuse(context)

        return streams

    async def answers(requests: Any, context: Context) -> Any:
        try:
            return await behavior(_checked(requests), context)
        except UndecodableRequestError:
            await _refuse(context)

    return answers
