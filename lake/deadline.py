"""
The caller's deadline, carried to every call an operation makes.

The API layer opens a scope with the time the client allows (clamped to the
server's maximum); the manager bounds the whole operation by it, and the mesh client
passes what remains to peers, so no dependency call outlives the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

__all__ = [
    "attempt_expired",
    "attempt_scope",
    "deadline_scope",
    "enter_attempt",
    "exit_attempt",
    "remaining",
]

_deadline: ContextVar[float | None] = ContextVar("lake_deadline", default=None)
# When the current attempt's own (adaptive) timeout ends, if it set one.
_attempt_ends: ContextVar[float | None] = ContextVar("lake_attempt_ends", default=None)


@contextmanager
def deadline_scope(seconds: float | None) -> Iterator[None]:
    """
    Within this block, the deadline is ``seconds`` from now (None: no deadline).
    """
    at = None if seconds is None else time.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and (at is None or outer < at):
        at = outer  # a nested scope can only shorten the deadline
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """
    Seconds left before the current deadline (never negative), or None.
    """
    at = _deadline.get()
    if at is None:
        return None
    return max(0.0, at - time.monotonic())


Tokens = tuple[Token[float | None], Token[float | None]]


def enter_attempt(seconds: float) -> Tokens:
    """
    From now on one attempt's own timeout of ``seconds`` applies too: the deadline
    is shortened to it, and ``attempt_expired()`` tells a dependency whose call
    was cut that it was too slow (not that the caller gave up). Undo with
    ``exit_attempt`` (plain calls: this sits on every read).
    """
    ends = time.monotonic() + seconds
    outer = _deadline.get()
    at = ends if outer is None or ends < outer else outer
    return _deadline.set(at), _attempt_ends.set(ends)


def exit_attempt(tokens: Tokens) -> None:
    """
    Undo ``enter_attempt``.
    """
    _attempt_ends.reset(tokens[1])
    _deadline.reset(tokens[0])


@contextmanager
def attempt_scope(seconds: float) -> Iterator[None]:
    """
    ``enter_attempt`` .. ``exit_attempt`` as a block.
    """
    tokens = enter_attempt(seconds)
    try:
        yield
    finally:
        exit_attempt(tokens)


def attempt_expired() -> bool:
    """
    True when the current attempt's own timeout has run out.
    """
    ends = _attempt_ends.get()
    return ends is not None and time.monotonic() >= ends - 0.001
