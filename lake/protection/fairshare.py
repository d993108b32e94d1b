"""
A bulkhead with fair shares: at most ``capacity`` calls hold the dependency at once
(the PostgreSQL pool's size), and when callers must wait, the next free slot goes
to the waiting tenant that holds the fewest slots (oldest first among equals).

It is work conserving: one tenant alone may use every slot. But a tenant flooding
the pool does not make others queue behind its backlog: a second tenant's call
takes the next slot that frees, so its wait is about one hold time, not the whole
flood's. And while another tenant uses the dependency (holds or waits for a slot,
or took one in the last ``active_s`` seconds), a tenant is capped at ``share`` of
the capacity, so the other finds slots free instead of waiting for one.

Waiting is refused at once (RESOURCE_EXHAUSTED with a pushback) instead of queued
when the tenant already has ``max_queue_per_tenant`` callers waiting, or when the
expected wait (its place in the tenant's queue x mean hold time / the tenant's
cap) would outlast the caller's deadline; a queued caller that is not served
within ``wait_s`` (the pool's acquire timeout) or its deadline gives up with the
same error.

Slots are not equal: a slot running a 60 ms aggregate burns a database core, one
running an indexed read mostly waits on the network. With ``by_time`` (the
default), while tenants share, each one's cap is weighed by how long it holds a
slot against the lightest other active tenant: ``cap x theirs / its own`` (at
least 1), so a tenant of heavy queries gets the same share of the database's
*time* as a tenant of light ones, not the same count of connections (a flood of
aggregates took the quiet tenant's p99 from 4 to 23 ms with half the pool).

The mean hold time describes the work of the last moments only: once no slot was
released for ``estimate_s``, it is stale (a bulk import's long holds said nothing
about the burst of reads after it, and refused most of it at once), so a caller
waits instead of being refused on it, and the next release starts it anew.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from lake import deadline
from lake.errors import ResourceExhaustedError
from lake.protection.timeouts import AttemptWatch

__all__ = ["FairGate", "GateSettings"]


@dataclass(frozen=True, slots=True)
class GateSettings:
    """
    The gate's bounds.
    """

    capacity: int = 10
    share: float = 0.5
    max_queue_per_tenant: int = 256
    wait_s: float = 2.0
    active_s: float = 1.0
    estimate_s: float = 1.0
    by_time: bool = True


# Holds measured before a tenant's mean is weighed: one slow first call (a
# partition created, a cold cache) must not mark a tenant heavy.
_WEIGH_AFTER = 8
# How often queued waits are checked for their end (see FairGate._wait).
_SWEEP_S = 0.02


@dataclass(slots=True)
class _Use:
    """
    One tenant's use of the slots: its mean hold time, when it last took a slot.
    """

    last_at: float  # monotonic
    hold_s: float = 0.0  # mean (EWMA) of the holds measured
    holds: int = 0

    def measured(self, sample: float) -> None:
        self.hold_s = (
            sample if not self.holds else self.hold_s + 0.1 * (sample - self.hold_s)
        )
        self.holds += 1

    @property
    def weighed(self) -> bool:
        return self.holds >= _WEIGH_AFTER


def _others(by_tenant: dict[str, Any], tenant: str) -> bool:
    # Whether a tenant other than ``tenant`` (and other than Lake itself) is in.
    n = len(by_tenant) - (tenant in by_tenant) - ("" in by_tenant)
    return n > 0


class FairGate:
    """
    Slots of one dependency, shared fairly between tenants.
    """

    def __init__(self, settings: GateSettings | None = None) -> None:
        self.settings = s = settings or GateSettings()
        self.capacity = max(1, s.capacity)
        self._cap = max(1, math.ceil(s.share * self.capacity))
        self.active = 0
        self._held: dict[str, int] = {}
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self.waiting = 0
        self.rejected = 0
        self._hold_s = 0.005  # mean hold time (EWMA), for the expected wait
        self._released_at = float("-inf")  # perf_counter of the last release
        # Each tenant's use; and, recomputed at most every 0.1 s, the two
        # lightest active tenants' (hold, tenant) among those weighed.
        self._tenants: dict[str, _Use] = {}
        self._lightest: tuple[tuple[float, str], ...] = ()
        self._lightest_at = float("-inf")
        # The tenant that took a slot last, when, and when another did before it.
        self._last = ""
        self._last_at = float("-inf")
        self._other_at = float("-inf")
        # Cuts the waits that outlast their end.
        self._watch = AttemptWatch(tick_s=_SWEEP_S)

    async def acquire(self, tenant: str) -> float:
        """
        Take a slot for ``tenant``; returns when it was taken (perf_counter).

        Raises:
            ResourceExhaustedError: no slot in time, or none expected in time.
        """
        held = self._held.get(tenant, 0)
        if (
            self.active < self.capacity
            and not self.waiting
            and held < self._limit(tenant)
        ):
            self.active += 1
            self._held[tenant] = held + 1
            self._took(tenant)
            return time.perf_counter()
        return await self._wait(tenant)

    def _limit(self, tenant: str) -> int:
        """
        How many slots ``tenant`` may hold: all of them while it is alone, its
        share while another tenant uses the dependency. Lake's own work (tenant
        ``""``: token, quota and usage tables, analyses) always gets a share and
        does not count as another tenant.
        """
        if not tenant:
            return self._cap
        sharing = (
            _others(self._held, tenant)
            or _others(self._queues, tenant)
            or self._other_took_lately(tenant)
        )
        return self._weighed(tenant) if sharing else self.capacity

    def _other_took_lately(self, tenant: str) -> bool:
        # Whether another tenant took a slot in the last ``active_s`` seconds.
        other = self._last_at if tenant != self._last else self._other_at
        return other > time.monotonic() - self.settings.active_s

    def _weighed(self, tenant: str) -> int:
        # The share, weighed by the tenant's hold time against the lightest other
        # active tenant's (by_time); the plain share without both figures.
        if not self.settings.by_time:
            return self._cap
        own = self._tenants.get(tenant)
        if own is None or not own.weighed:
            return self._cap
        lightest = self._lightest_now()
        ref = next((hold for hold, name in lightest if name != tenant), None)
        if ref is None or ref >= own.hold_s:
            return self._cap
        return max(1, min(self._cap, int(self._cap * ref / own.hold_s)))

    def _lightest_now(self) -> tuple[tuple[float, str], ...]:
        now = time.monotonic()
        if now - self._lightest_at < 0.1:
            return self._lightest
        recent = now - self.settings.active_s
        active = [
            (use.hold_s, t)
            for t, use in self._tenants.items()
            if use.last_at > recent and use.weighed
        ]
        if len(self._tenants) > 4 * max(len(active), 1024):  # forget the idle
            self._tenants = {
                t: use for t, use in self._tenants.items() if use.last_at > recent
            }
        self._lightest = tuple(sorted(active)[:2])
        self._lightest_at = now
        return self._lightest

    def _took(self, tenant: str) -> None:
        if not tenant:
            return
        now = time.monotonic()
        use = self._tenants.get(tenant)
        if use is None:
            self._tenants[tenant] = _Use(last_at=now)
        else:
            use.last_at = now
        if tenant != self._last:
            self._other_at = self._last_at
            self._last = tenant
        self._last_at = now

    def release(self, tenant: str, taken: float) -> None:
        """
        Give back ``tenant``'s slot taken at ``taken``; hands it on to the next waiter.
        """
        now = time.perf_counter()
        sample = now - taken
        if self._fresh(now):
            self._hold_s += 0.05 * (sample - self._hold_s)
        else:  # the old mean describes other work: start anew
            self._hold_s = sample
        self._released_at = now
        use = self._tenants.get(tenant)
        if use is not None:
            use.measured(sample)
            if use.holds == _WEIGH_AFTER:  # the lightest may have changed
                self._lightest_at = float("-inf")
        held = self._held.get(tenant, 1) - 1
        if held:
            self._held[tenant] = held
        else:
            self._held.pop(tenant, None)
        self.active -= 1
        if self.waiting:
            self._hand_on()

    def snapshot(self) -> dict[str, int | float]:
        """
        Slots in use, callers waiting, refusals, and the mean hold time.
        """
        return {
            "capacity": self.capacity,
            "active": self.active,
            "waiting": self.waiting,
            "tenants_waiting": len(self._queues),
            "rejected": self.rejected,
            "mean_hold_ms": round(self._hold_s * 1000, 3),
        }

    # --- internals -----------------------------------------------------------------

    def _fresh(self, now: float) -> bool:
        # Whether the mean hold time describes the last moments' work.
        return now - self._released_at <= self.settings.estimate_s

    def _refuse(self, why: str, after: float) -> ResourceExhaustedError:
        self.rejected += 1
        return ResourceExhaustedError(f"database busy: {why}").after(after)

    async def _wait(self, tenant: str) -> float:
        queue = self._queues.get(tenant)
        queued = 0 if queue is None else len(queue)
        # At best this tenant's queue drains at its cap's pace.
        expected = (queued + 1) * self._hold_s / min(self._limit(tenant), self.capacity)
        if queued >= self.settings.max_queue_per_tenant:
            msg = "too many calls of this tenant waiting"
            raise self._refuse(msg, expected)
        left = deadline.remaining()
        if left is not None and (
            left <= 0 or (expected > left and self._fresh(time.perf_counter()))
        ):
            msg = "no connection expected within the deadline"
            raise self._refuse(msg, expected)
        if queue is None:
            queue = self._queues[tenant] = deque()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        queue.append(future)
        self.waiting += 1
        if self.active < self.capacity:
            self._hand_on()  # the waiters ahead were all at their cap
        # The wait's end: the watch cancels a caller still queued past it (one
        # ticking task for every wait, not a timer per wait: asyncio.timeout's
        # timer, its heap entry and its cancellation were a third of the gate's
        # cost). It ends up to _SWEEP_S late; the caller's deadline is enforced
        # outside the gate too.
        task = asyncio.current_task()
        if task is not None:
            limit = (
                self.settings.wait_s
                if left is None
                else min(self.settings.wait_s, left)
            )
            self._watch.arm(task, loop.time() + limit)
        try:
            await future
        except BaseException:
            late = task is not None and self._watch.disarm(task)
            if future.done() and not future.cancelled():
                # Handed a slot as the wait ended: give it back to the next one.
                self.release(tenant, time.perf_counter())
            else:
                self._forget(tenant, future)
            if late:
                msg = "no connection free in time"
                raise self._refuse(msg, expected) from None
            raise
        if task is not None:
            self._watch.disarm(task)
        return time.perf_counter()

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        self.waiting -= 1
        if not queue:
            del self._queues[tenant]

    def _hand_on(self) -> None:
        # The waiting tenant holding the fewest slots goes next (dict order, i.e.
        # the longest-waiting tenant, breaks ties); one over its cap waits on.
        while self.waiting and self.active < self.capacity:
            best: str | None = None
            fewest = self.capacity
            for tenant in self._queues:
                held = self._held.get(tenant, 0)
                if held < fewest and held < self._limit(tenant):
                    best, fewest = tenant, held
            if best is None:
                return
            queue = self._queues[best]
            future = queue.popleft()
            self.waiting -= 1
            if not queue:
                del self._queues[best]
            else:  # to the back of the line of tenants
                self._queues[best] = self._queues.pop(best)
            if future.done():
                continue  # gave up meanwhile
            self.active += 1
            self._held[best] = fewest + 1
            self._took(best)
            future.set_result(None)
