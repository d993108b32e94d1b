"""
A circuit breaker with Resilience4j's semantics, per dependency and per process.

::

    CLOSED --failure or slow-call rate over the threshold--> OPEN
    OPEN --open_wait_s passed, next call--> HALF_OPEN
    HALF_OPEN --the probe calls pass--> CLOSED
    HALF_OPEN --the probe calls fail (or hang past max_half_open_s)--> OPEN

The window is time based: ``window_s`` buckets of one second each hold the calls,
failures and slow calls that finished in that second. The rates are only judged
once the window holds ``min_calls`` calls, so a quiet dependency is not cut off by
two unlucky calls. Only the dependency's own failures count (the caller of
``record`` says which: see ``lake.protection.policy``); ignored outcomes count as
neither success nor failure.

Why not a library: purgatory, aiobreaker and pybreaker all count *consecutive*
failures against a fixed threshold, with no failure-rate or slow-call-rate window
and no fixed number of half-open probes, and purgatory awaits its storage on every
call. This state machine is ~150 lines and costs a comparison per call while closed.

State is per process: each instance (and each ``lake serve`` worker) judges its
dependencies from its own calls, which is what a breaker should protect.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from lake.errors import CircuitOpenError
from lake.protection.window import SecondBuckets

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker", "Outcome"]

log = structlog.get_logger(__name__)

_CALLS, _FAILURES, _SLOW = 0, 1, 2  # counters of a window's bucket


class BreakerState(enum.Enum):
    """
    Where a breaker is.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """
    What one finished call says about the dependency.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """
    Thresholds of one breaker (see the README's "Resilience" section).
    """

    window_s: int = 10
    min_calls: int = 20
    failure_rate: float = 0.5
    slow_call_rate: float = 0.8
    slow_call_s: float = 10.0
    open_wait_s: float = 0.5
    half_open_calls: int = 3
    max_half_open_s: float = 5.0
    # False: counts nothing and never opens (to measure what the breaker costs).
    enabled: bool = True


class CircuitBreaker:
    """
    One dependency's breaker.

    ``allow()`` before a call (raises ``CircuitOpenError`` when refused) returns a
    ticket; ``record(ticket, outcome, seconds)`` after it. A ticket from an older
    state is not counted in the new one, so calls that started before the breaker
    opened do not pass for half-open probes.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = s = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self.state = BreakerState.CLOSED
        self._epoch = 0
        # Calls, failures and slow calls per second of the window.
        self._window = SecondBuckets(s.window_s, 3)
        self._open_until = 0.0
        self._half_open_since = 0.0
        self._probes_issued = 0
        self._probe_calls = 0
        self._probe_failures = 0
        self._probe_slow = 0
        self.transitions: dict[str, int] = {}
        self.rejected = 0
        self.last_rates = (0.0, 0.0)

    # --- the call path -------------------------------------------------------------

    def allow(self) -> int:
        """
        Permit one call, or raise ``CircuitOpenError``; returns the call's ticket.
        """
        if self.state is BreakerState.CLOSED:
            return self._epoch
        now = self._clock()
        if self.state is BreakerState.OPEN:
            if now < self._open_until:
                self.rejected += 1
                raise CircuitOpenError(self.name, self._open_until - now)
            self._move(BreakerState.HALF_OPEN, now)
        # HALF_OPEN: a fixed number of probe calls; the rest are refused.
        if self._probes_issued < self.settings.half_open_calls:
            self._probes_issued += 1
            return self._epoch
        if now - self._half_open_since > self.settings.max_half_open_s:
            # Probes that never came back: the dependency hangs. Open again.
            self._open(now)
        self.rejected += 1
        raise CircuitOpenError(self.name, self.settings.open_wait_s)

    def refusing(self) -> bool:
        """
        True while open and its wait is not over (a call now would be refused).
        """
        return self.state is BreakerState.OPEN and self._clock() < self._open_until

    def check(self) -> None:
        """
        Raise ``CircuitOpenError`` when ``allow()`` would refuse a call now: open,
        or half-open with every probe permit taken. It takes no permit itself, so
        a caller can fail fast before doing any other work (which, during a
        half-open, would slow the probes down).
        """
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            now = self._clock()
            if now < self._open_until:
                self.rejected += 1
                raise CircuitOpenError(self.name, self._open_until - now)
        elif self._probes_issued >= self.settings.half_open_calls:
            self.rejected += 1
            raise CircuitOpenError(self.name, self.settings.open_wait_s)

    def record(self, ticket: int, outcome: Outcome, seconds: float) -> None:
        """
        Count one finished call that ``allow()`` permitted with ``ticket``.
        """
        if ticket != self._epoch or not self.settings.enabled:
            return  # permitted under an earlier state, or switched off
        slow = seconds >= self.settings.slow_call_s
        if self.state is BreakerState.CLOSED:
            if outcome is Outcome.IGNORED:
                return
            failed = outcome is Outcome.FAILURE
            now = self._clock()
            bucket = self._window.bucket(now)
            bucket[_CALLS] += 1
            if failed:
                bucket[_FAILURES] += 1
            if slow:
                bucket[_SLOW] += 1
            if failed or slow:
                self._judge(now)
        elif self.state is BreakerState.HALF_OPEN:
            if outcome is Outcome.IGNORED:
                self._probes_issued -= 1  # its permit goes to another call
                return
            self._probe_calls += 1
            self._probe_failures += outcome is Outcome.FAILURE
            self._probe_slow += slow
            if self._probe_calls >= self.settings.half_open_calls:
                now = self._clock()
                calls = self._probe_calls
                if self._over(calls, self._probe_failures, self._probe_slow):
                    self._open(now)
                else:
                    self._move(BreakerState.CLOSED, now)

    # --- reporting -----------------------------------------------------------------

    def retry_after(self) -> float:
        """
        Seconds until the breaker lets a call through again (0 when closed).
        """
        if self.state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def snapshot(self) -> dict[str, object]:
        """
        State, the window's figures and transition counts, for ``lake status``.
        """
        now = self._clock()
        calls, failures, slow = self._totals(now)
        return {
            "state": self.state.value,
            "calls": calls,
            "failure_rate": round(failures / calls, 3) if calls else 0.0,
            "slow_call_rate": round(slow / calls, 3) if calls else 0.0,
            "rejected": self.rejected,
            "retry_after_ms": int(self.retry_after() * 1000),
            "transitions": dict(self.transitions),
        }

    # --- internals -----------------------------------------------------------------

    def _totals(self, now: float) -> tuple[int, int, int]:
        calls, failures, slow = self._window.totals(now)
        return calls, failures, slow

    def _over(self, calls: int, failures: int, slow: int) -> bool:
        s = self.settings
        self.last_rates = (failures / calls, slow / calls)
        return failures >= s.failure_rate * calls or slow >= s.slow_call_rate * calls

    def _judge(self, now: float) -> None:
        calls, failures, slow = self._totals(now)
        if calls >= self.settings.min_calls and self._over(calls, failures, slow):
            self._open(now)

    def _open(self, now: float) -> None:
        self._open_until = now + self.settings.open_wait_s
        self._move(BreakerState.OPEN, now)

    def _move(self, state: BreakerState, now: float) -> None:
        was = self.state
        self.state = state
        self._epoch += 1
        self._probes_issued = self._probe_calls = 0
        self._probe_failures = self._probe_slow = 0
        if state is BreakerState.HALF_OPEN:
            self._half_open_since = now
        if state is BreakerState.CLOSED:
            self._window.clear()  # a fresh window
        key = f"{was.value}->{state.value}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        failure_rate, slow_rate = self.last_rates
        if state is BreakerState.OPEN:
            log.warning(
                "circuit_opened",
                dependency=self.name,
                was=was.value,
                failure_rate=round(failure_rate, 3),
                slow_call_rate=round(slow_rate, 3),
                open_s=self.settings.open_wait_s,
            )
        else:
            log.info(f"circuit_{state.value}", dependency=self.name, was=was.value)
        if self._on_transition is not None:
            self._on_transition(self.name, was, state)
