"""
Admission: which calls may take a slot, so outside traffic cannot starve the rest.

grpcio's ``maximum_concurrent_rpcs`` counts every call before any interceptor runs,
health Watch streams without a token included: 300 idle Watch streams used to take
all 256 slots, and liveness, readiness and every authenticated call were refused.
Lake therefore keeps three classes apart:

- **API calls** (``/lake.v1.*`` except ``LakeHealth``): at most ``max_api_calls`` in
  flight; one more is refused at once with RESOURCE_EXHAUSTED.
- **Open streams** (health ``Watch``, reflection): at most ``max_open_streams`` in
  total and ``max_streams_per_peer`` per client connection; they need no token, so
  they get their own small budget.
- **Probes** (health ``Check``, ``LakeHealth``): never refused while the process
  lives; they are short and cheap.

grpcio's own limit stays as a backstop above the sum, so it is never what refuses a
probe.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from lake.api.wrapped import Layer

__all__ = ["Admission", "AdmissionInterceptor"]

log = structlog.get_logger(__name__)

_API_PREFIX = "/lake.v1."
_PROBES = ("/lake.v1.LakeHealth/", "/grpc.health.v1.Health/Check")
_STREAMS = ("/grpc.health.v1.Health/Watch", "/grpc.reflection.")


class Admission:
    """
    Counters of what is in flight per class, and the limits they are held to.
    """

    def __init__(
        self, *, max_api_calls: int, max_open_streams: int, max_streams_per_peer: int
    ) -> None:
        self.max_api_calls = max_api_calls
        self.max_open_streams = max_open_streams
        self.max_streams_per_peer = max_streams_per_peer
        self.api_calls = 0
        self.open_streams = 0
        self.streams_by_peer: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    @property
    def backstop(self) -> int:
        """
        grpcio's own limit: above every class together, with room for probes.
        """
        return self.max_api_calls + self.max_open_streams + 256

    def admit_stream(self, peer: str) -> bool:
        """
        Take an open-stream slot for ``peer``; False when none is left.
        """
        if (
            self.open_streams >= self.max_open_streams
            or self.streams_by_peer[peer] >= self.max_streams_per_peer
        ):
            self.refused["streams"] += 1
            return False
        self.open_streams += 1
        self.streams_by_peer[peer] += 1
        return True

    def release_stream(self, peer: str) -> None:
        """
        Give back the open-stream slot of ``peer``.
        """
        self.open_streams -= 1
        self.streams_by_peer[peer] -= 1
        if self.streams_by_peer[peer] <= 0:
            del self.streams_by_peer[peer]

    def stats(self) -> dict[str, int]:
        """
        In-flight counts and refusals, for ``lake status``.
        """
        return {
            "api_calls": self.api_calls,
            "open_streams": self.open_streams,
            "refused_api_calls": self.refused["api"],
            "refused_streams": self.refused["streams"],
        }


class AdmissionInterceptor(Layer):
    """
    Holds API calls and open streams to their own budgets; probes pass untouched.
    """

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    def wrap(self, handler: Any, method: str) -> Any:
        if method.startswith(_PROBES):
            return handler
        if method.startswith(_STREAMS):
            return _wrap(handler, self._stream_slot)
        if method.startswith(_API_PREFIX):
            return _wrap(handler, self._api_slot)
        return handler

    def _api_slot(self, context: Any) -> Callable[[], None] | None:
        admission = self._admission
        if admission.api_calls >= admission.max_api_calls:
            admission.refused["api"] += 1
            return None
        admission.api_calls += 1

        def release() -> None:
            admission.api_calls -= 1

        return release

    def _stream_slot(self, context: Any) -> Callable[[], None] | None:
        peer = str(context.peer())
        if not self._admission.admit_stream(peer):
            return None
        return lambda: self._admission.release_stream(peer)


Slot = Callable[[Any], Callable[[], None] | None]

_BUSY = "server busy: too many calls in flight, retry shortly"


def _wrap(handler: Any, slot: Slot) -> Any:
    """
    ``handler`` with each of its behaviours run only inside a slot.
    """
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        inner = getattr(handler, kind)
        if inner is not None:
            guarded = (
                _streaming(inner, slot)
                if inspect.isasyncgenfunction(inner)
                else _awaiting(inner, slot)
            )
            return handler._replace(**{kind: guarded})
    return handler


def _awaiting(inner: Callable[..., Awaitable[Any]], slot: Slot) -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        release = slot(context)
        if release is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _BUSY)
            return None  # abort raises; never reached
        try:
            return await inner(request, context)
        finally:
            release()

    return behaviour


def _streaming(inner: Callable[..., AsyncIterator[Any]], slot: Slot) -> Any:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        release = slot(context)
        if release is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _BUSY)
            return  # abort raises; never reached
        once = _once(release)
        # A call cancelled while grpcio sends (outside this generator) would run
        # the finally only when the generator is collected: the call's end
        # releases the slot at once.
        context.add_done_callback(lambda _: once())
        try:
            async for item in inner(request, context):
                yield item
        finally:
            once()

    return behaviour


def _once(release: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    return run
