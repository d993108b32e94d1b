"""
Interceptors that wrap each method's handler once, and a chain of them run as one.

grpc.aio runs every interceptor on every call: each ``intercept_service`` is a
coroutine (and, inside grpcio, another coroutine and a ``functools.partial``) per
call, and wrapping the handler anew each time builds closures per call. A method's
inner handler is the same object from call to call, so each ``Layer`` keeps its
wrapped handler per method and reuses it while the inner one is unchanged, and a
``Chain`` runs several layers as one interceptor: one ``intercept_service`` per
call, each method's handler wrapped by every layer once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["Chain", "Layer", "WrappedHandlers", "chained"]

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Interceptor = grpc.aio.ServerInterceptor

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]


class WrappedHandlers:
    """
    One interceptor's wrapped handler per method.
    """

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[Any, Any]] = {}
        self.built = 0  # wrappers made (one per method while the cache holds)

    def get(
        self, method: str, handler: Any, wrap: Callable[..., Any], *args: Any
    ) -> Any:
        """
        ``wrap(handler, *args)``, built once per method and inner handler.
        """
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(handler, *args)
        self.built += 1
        if wrapped is not None:
            self._by_method[method] = (handler, wrapped)
        return wrapped


class Layer(_Interceptor):
    """
    An interceptor defined by how it wraps one method's handler (``wrap``).
    """

    def __init__(self) -> None:
        self._wrapped = WrappedHandlers()

    def wrap(self, handler: Any, method: str) -> Any:
        """
        ``handler`` as this layer serves ``method``: wrapped, the same, or None
        (nothing may serve it).
        """
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._wrapped.get(details.method, handler, self.wrap, details.method)


class Chain(_Interceptor):
    """
    ``layers`` as one interceptor, the first outermost (as in the server's list).
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self._wrapped = WrappedHandlers()

    def _wrap(self, handler: Any, method: str) -> Any:
        for layer in reversed(self.layers):
            handler = layer.wrap(handler, method)
            if handler is None:
                return None
        return handler

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._wrapped.get(details.method, handler, self._wrap, details.method)


def chained(interceptors: Sequence[Any]) -> list[Any]:
    """
    The server's interceptor list: each run of consecutive layers as one
    ``Chain``; any other interceptor (a test's, say) kept as it is, in its place.
    """
    out: list[Any] = []
    run: list[Layer] = []
    for interceptor in interceptors:
        if isinstance(interceptor, Layer):
            run.append(interceptor)
            continue
        if run:
            out.append(Chain(run))
            run = []
        out.append(interceptor)
    if run:
        out.append(Chain(run))
    return out
