"""
Usage metering that could bill: per tenant, operation, UTC hour and status code,
the calls, items, bytes and database time, aggregated in memory.

The gRPC layer (``lake.api.metering``) opens a ``Charge`` for each metered call;
database transactions add their time to it (``timed_db``) and the call records
itself into the ``Meter`` once, when it ends, however many times the manager retried
it. A flusher (``lake.flusher``) writes the meter's rows to PostgreSQL in batches,
each with a unique id, so a batch written twice (a lost reply, a retry) counts once.

Memory: one ``Tally`` per (tenant, operation, hour, code) seen since the last flush,
at most ``max_rows`` of them; past that, calls that would open a new row are not
metered: they are counted in ``dropped`` (``lake status`` shows it) and logged once
(``usage_rows_full``) until a flush makes room. That only happens while
PostgreSQL refuses the flushes for a long time.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

import structlog

__all__ = [
    "OK",
    "Batch",
    "Charge",
    "Meter",
    "Tally",
    "UsageRow",
    "UsageStore",
    "UsageSummary",
    "close_charge",
    "current_charge",
    "open_charge",
    "timed_db",
]

log = structlog.get_logger(__name__)

OK = "OK"
P = ParamSpec("P")
T = TypeVar("T")


class Charge:
    """
    What one metered call spent beyond its messages: database time (seconds).
    """

    __slots__ = ("db_s",)

    def __init__(self) -> None:
        self.db_s = 0.0


_CHARGE: ContextVar[Charge | None] = ContextVar("lake_charge", default=None)


def current_charge() -> Charge | None:
    """
    The charge of the call being served, if it is metered.
    """
    return _CHARGE.get()


def open_charge() -> tuple[Charge, Any]:
    """
    Start charging the current context; returns the charge and the token with
    which ``_CHARGE.reset`` ends it (``close_charge``).
    """
    charge = Charge()
    return charge, _CHARGE.set(charge)


def close_charge(token: Any) -> None:
    """
    Stop charging the current context.
    """
    _CHARGE.reset(token)


class _TimedTransaction:
    """
    An async context manager that adds the time spent inside ``inner`` to a charge.
    """

    __slots__ = ("_charge", "_inner", "_started")

    def __init__(self, inner: AbstractAsyncContextManager[T], charge: Charge) -> None:
        self._inner: AbstractAsyncContextManager[Any] = inner
        self._charge = charge
        self._started = 0.0

    async def __aenter__(self) -> Any:
        self._started = time.perf_counter()
        try:
            return await self._inner.__aenter__()
        except BaseException:
            self._charge.db_s += time.perf_counter() - self._started
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._inner.__aexit__(kind, exc, tb)
        finally:
            self._charge.db_s += time.perf_counter() - self._started


def timed_db(
    fn: Callable[P, AbstractAsyncContextManager[T]],
) -> Callable[P, AbstractAsyncContextManager[T]]:
    """
    Charge the time spent inside the transactions ``fn`` opens (acquiring the
    connection included) to the metered call that opens them, if any.
    """

    @functools.wraps(fn)
    def timed(*args: P.args, **kwargs: P.kwargs) -> AbstractAsyncContextManager[T]:
        inner = fn(*args, **kwargs)
        charge = _CHARGE.get()
        if charge is None:
            return inner
        return _TimedTransaction(inner, charge)

    return timed


class Tally:
    """
    The counts of one (tenant, operation, hour, code) row.
    """

    __slots__ = ("bytes_in", "bytes_out", "calls", "db_us", "items_in", "items_out")

    def __init__(self) -> None:
        self.calls = 0
        self.items_in = 0
        self.items_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.db_us = 0


@dataclass(frozen=True, slots=True)
class UsageRow:
    """
    One row of usage: what a tenant's calls of one operation ending with one
    status code cost in one UTC hour (``bucket``, its start).
    """

    bucket: datetime
    tenant: str
    operation: str
    code: str
    calls: int
    items_in: int = 0
    items_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    db_us: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """
    Rows to add to the usage table once: ``id`` is unique to this batch
    (``<instance>:<sequence>``), so writing it again adds nothing.
    """

    id: str
    rows: tuple[UsageRow, ...]

    @property
    def calls(self) -> int:
        """
        The calls the batch holds.
        """
        return sum(r.calls for r in self.rows)


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """
    A tenant's usage of one operation over one hour or day (``start``): calls,
    failed calls by status code, items, bytes and database time.
    """

    start: datetime
    tenant: str
    operation: str
    calls: int
    failures: dict[str, int]
    items_in: int
    items_out: int
    bytes_in: int
    bytes_out: int
    db_us: int


class UsageStore(Protocol):
    """
    Where usage batches go and are read from (``lake.stores.usage.PgUsageStore``).
    """

    async def add(self, batch: Batch) -> bool:
        """
        Add the batch's rows unless a batch of that id was added before; True
        when this call added them.
        """
        ...

    async def read(
        self,
        *,
        tenant: str | None,
        since: datetime,
        until: datetime,
        granularity: str,
        max_rows: int,
    ) -> list[UsageSummary]:
        """
        Usage in the hours from the one holding ``since`` up to ``until``, per
        ``granularity`` ("hour" or "day"), of one tenant or (None) every tenant.
        """
        ...

    async def purge(self, older_than_days: int) -> int:
        """
        Forget batch ids older than that (their counts stay); how many.
        """
        ...


_Key = tuple[str, str, int, str]


class Meter:
    """
    Usage since the last acknowledged flush, per tenant, operation, hour and code.

    ``record`` is the hot path (a dict lookup and a few additions). ``batch`` hands
    out the rows to write, as a batch that stays the same (same id) until
    ``acknowledge``: a flush that failed, or whose reply was lost, is written again
    as is, and counts accumulated meanwhile wait for the next batch.
    """

    def __init__(
        self,
        *,
        max_rows: int = 100_000,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance = instance or uuid.uuid4().hex[:16]
        self._max_rows = max_rows
        self._clock = clock
        self._live: dict[_Key, Tally] = {}
        self._pending: Batch | None = None
        self._sequence = 0
        self.dropped = 0  # calls not metered: max_rows reached

    def record(
        self,
        tenant: str,
        operation: str,
        code: str,
        *,
        items_in: int = 0,
        items_out: int = 0,
        bytes_in: int = 0,
        bytes_out: int = 0,
        db_s: float = 0.0,
    ) -> None:
        """
        Count one call of ``operation`` by ``tenant`` that ended with ``code``.
        """
        now = int(self._clock())
        key = (tenant, operation, now - now % 3600, code)
        tally = self._live.get(key)
        if tally is None:
            if len(self._live) >= self._max_rows:
                if not self.dropped:
                    log.warning("usage_rows_full", rows=len(self._live))
                self.dropped += 1
                return
            tally = self._live[key] = Tally()
        tally.calls += 1
        tally.items_in += items_in
        tally.items_out += items_out
        tally.bytes_in += bytes_in
        tally.bytes_out += bytes_out
        tally.db_us += int(db_s * 1_000_000)

    @property
    def rows(self) -> int:
        """
        Rows held: counting and waiting to be flushed.
        """
        pending = 0 if self._pending is None else len(self._pending.rows)
        return len(self._live) + pending

    def batch(self) -> Batch | None:
        """
        The batch to write next: the unacknowledged one if any, else the counts so
        far (which then start again from zero), else None when there is nothing.
        """
        if self._pending is None and self._live:
            self._sequence += 1
            rows = tuple(
                UsageRow(
                    bucket=datetime.fromtimestamp(hour, UTC),
                    tenant=tenant,
                    operation=operation,
                    code=code,
                    calls=t.calls,
                    items_in=t.items_in,
                    items_out=t.items_out,
                    bytes_in=t.bytes_in,
                    bytes_out=t.bytes_out,
                    db_us=t.db_us,
                )
                for (tenant, operation, hour, code), t in sorted(self._live.items())
            )
            self._pending = Batch(f"{self.instance}:{self._sequence}", rows)
            self._live = {}
            if self.dropped:
                log.warning("usage_calls_dropped", calls=self.dropped)
                self.dropped = 0
        return self._pending

    def acknowledge(self, batch: Batch) -> None:
        """
        ``batch`` is stored: forget it.
        """
        if self._pending is batch:
            self._pending = None

    def stats(self) -> dict[str, int]:
        """
        Rows held and calls dropped since the last batch (no tenant data).
        """
        return {"rows": self.rows, "dropped": self.dropped}
