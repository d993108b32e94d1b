"""
Layers run as one interceptor: the same order as separate interceptors, each
method's handler wrapped once.
"""

from __future__ import annotations

from typing import Any

import grpc

from lake.api.wrapped import Chain, Layer, chained


class Tag(Layer):
    """Wraps a unary handler so that it notes its name before the inner one."""

    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__()
        self.name = name
        self.seen = seen

    def wrap(self, handler: Any, method: str) -> Any:
        inner = handler.unary_unary

        async def behaviour(request: Any, context: Any) -> Any:
            self.seen.append(self.name)
            return await inner(request, context)

        return handler._replace(unary_unary=behaviour)


class Details:
    method = "/lake.v1.Spatial/Nearest"
    invocation_metadata = ()


async def test_the_first_layer_is_outermost_and_each_method_is_wrapped_once() -> None:
    """As with a list of interceptors, the first runs first; twenty calls build
    the wrapped handler once."""
    seen: list[str] = []

    async def served(request: Any, context: Any) -> str:
        seen.append("servicer")
        return "ok"

    base = grpc.unary_unary_rpc_method_handler(served)
    chain = Chain([Tag("outer", seen), Tag("inner", seen)])

    async def continuation(details: Any) -> Any:
        return base

    for _ in range(20):
        details: Any = Details()
        handler = await chain.intercept_service(continuation, details)
        assert await handler.unary_unary(b"", None) == "ok"
    assert seen[:3] == ["outer", "inner", "servicer"]
    assert chain._wrapped.built == 1


def test_other_interceptors_keep_their_place_between_chains() -> None:
    """A plain interceptor (a test's) stays where it was; the layers around it
    become a chain each."""
    a, b, c = Tag("a", []), Tag("b", []), Tag("c", [])
    plain = object()
    out = chained([a, b, plain, c])
    assert isinstance(out[0], Chain)
    assert out[0].layers == [a, b]
    assert out[1] is plain
    assert isinstance(out[2], Chain)
    assert out[2].layers == [c]
