"""
Wrapped handlers cached per method, for the server interceptors.

grpc.aio runs every interceptor on every call; wrapping the handler anew each time
builds closures per call. A method's inner handler is the same object from call to
call, so each interceptor keeps its wrapped handler per method and reuses it while
the inner one is unchanged: per call, a dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["WrappedHandlers"]


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
