"""
The protection layer's parts on a fake clock: breaker (F18), retry budget,
adaptive timeouts, fair shares.
"""

from __future__ import annotations

import asyncio

import pytest

from lake import deadline
from lake.errors import (
    CircuitOpenError,
    MeshUnavailableError,
    ResourceExhaustedError,
    StoreUnavailableError,
    ValidationError,
)
from lake.protection import (
    AdaptiveTimeout,
    AttemptWatch,
    BreakerSettings,
    BreakerState,
    BudgetSettings,
    CircuitBreaker,
    FairGate,
    GateSettings,
    Outcome,
    Protection,
    RetryBudget,
    TimeoutSettings,
)
from tests.waiting import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    defaults: dict[str, float] = {
        "window_s": 10,
        "min_calls": 10,
        "failure_rate": 0.5,
        "open_wait_s": 1.0,
        "half_open_calls": 3,
    }
    defaults.update(settings)
    return CircuitBreaker(
        "postgres",
        BreakerSettings(**defaults),  # type: ignore[arg-type]
        clock=clock,
    )


def calls(b: CircuitBreaker, outcome: Outcome, n: int, seconds: float = 0.001) -> None:
    for _ in range(n):
        b.record(b.allow(), outcome, seconds)


# --- F18: breaker logic ------------------------------------------------------------


def test_breaker_opens_only_after_the_minimum_number_of_calls() -> None:
    clock = Clock()
    b = breaker(clock)
    calls(b, Outcome.FAILURE, 9)
    assert b.state is BreakerState.CLOSED  # 100 % failed, but only 9 calls
    calls(b, Outcome.FAILURE, 1)
    assert b.state is BreakerState.OPEN
    assert b.transitions == {"closed->open": 1}


def test_breaker_opens_at_the_failure_rate_threshold_not_below() -> None:
    clock = Clock()
    b = breaker(clock, min_calls=10)
    calls(b, Outcome.SUCCESS, 11)
    calls(b, Outcome.FAILURE, 10)  # 10 of 21: under 50 %
    assert b.state is BreakerState.CLOSED
    calls(b, Outcome.FAILURE, 1)  # 11 of 22: 50 %
    assert b.state is BreakerState.OPEN


def test_ignored_outcomes_count_neither_way() -> None:
    clock = Clock()
    b = breaker(clock)
    calls(b, Outcome.IGNORED, 100)  # invalid input, not found, caller's deadline
    calls(b, Outcome.FAILURE, 9)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot()["calls"] == 9


def test_the_window_forgets_calls_older_than_its_length() -> None:
    clock = Clock()
    b = breaker(clock, window_s=10, min_calls=10)
    calls(b, Outcome.FAILURE, 9)
    clock.now += 11  # those nine fell out of the window
    calls(b, Outcome.FAILURE, 9)
    assert b.state is BreakerState.CLOSED
    calls(b, Outcome.FAILURE, 1)
    assert b.state is BreakerState.OPEN


def test_slow_calls_open_the_breaker_at_their_own_rate() -> None:
    clock = Clock()
    b = breaker(clock, slow_call_s=1.0, slow_call_rate=0.8)
    calls(b, Outcome.SUCCESS, 7, seconds=2.0)
    calls(b, Outcome.SUCCESS, 2, seconds=0.01)
    assert b.state is BreakerState.CLOSED
    calls(b, Outcome.SUCCESS, 1, seconds=2.0)  # 8 slow of 10
    assert b.state is BreakerState.OPEN


def test_open_breaker_refuses_at_once_with_a_pushback_then_half_opens() -> None:
    clock = Clock()
    b = breaker(clock, open_wait_s=1.0)
    calls(b, Outcome.FAILURE, 10)
    clock.now += 0.25
    with pytest.raises(CircuitOpenError) as refused:
        b.allow()
    assert refused.value.retry_after_s == pytest.approx(0.75)
    assert refused.value.dependency == "postgres"
    clock.now += 0.75
    tickets = [b.allow() for _ in range(3)]  # the three probe calls
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.allow()  # a fourth is refused while the probes run
    for ticket in tickets:
        b.record(ticket, Outcome.SUCCESS, 0.001)
    assert b.state is BreakerState.CLOSED
    assert b.transitions == {
        "closed->open": 1,
        "open->half_open": 1,
        "half_open->closed": 1,
    }


def test_failed_probes_open_the_breaker_again() -> None:
    clock = Clock()
    b = breaker(clock)
    calls(b, Outcome.FAILURE, 10)
    clock.now += 1.0
    tickets = [b.allow() for _ in range(3)]
    b.record(tickets[0], Outcome.SUCCESS, 0.001)
    b.record(tickets[1], Outcome.FAILURE, 0.001)
    b.record(tickets[2], Outcome.FAILURE, 0.001)
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        b.allow()


def test_an_ignored_probe_gives_its_permit_to_another_call() -> None:
    clock = Clock()
    b = breaker(clock, half_open_calls=1)
    calls(b, Outcome.FAILURE, 10)
    clock.now += 1.0
    ticket = b.allow()
    b.record(ticket, Outcome.IGNORED, 0.001)  # an invalid request says nothing
    assert b.state is BreakerState.HALF_OPEN
    b.record(b.allow(), Outcome.SUCCESS, 0.001)
    assert b.state is BreakerState.CLOSED


def test_calls_permitted_before_the_breaker_opened_are_not_probes() -> None:
    clock = Clock()
    b = breaker(clock, half_open_calls=1)
    early = b.allow()
    calls(b, Outcome.FAILURE, 10)
    clock.now += 1.0
    probe = b.allow()
    b.record(early, Outcome.SUCCESS, 0.001)  # from the closed state: not counted
    assert b.state is BreakerState.HALF_OPEN
    b.record(probe, Outcome.FAILURE, 0.001)
    assert b.state is BreakerState.OPEN


def test_probes_that_never_return_open_the_breaker_again() -> None:
    clock = Clock()
    b = breaker(clock, max_half_open_s=5.0)
    calls(b, Outcome.FAILURE, 10)
    clock.now += 1.0
    for _ in range(3):
        b.allow()  # hung
    clock.now += 6.0
    with pytest.raises(CircuitOpenError):
        b.allow()
    assert b.state is BreakerState.OPEN


# --- retry budget ------------------------------------------------------------------


def test_retry_budget_allows_a_ratio_of_requests_plus_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(
        BudgetSettings(ratio=0.2, min_per_s=1.0, ttl_s=10), clock=clock
    )
    for _ in range(100):
        budget.deposit()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 30  # 20 % of 100, plus 1/s over 10 s
    assert budget.snapshot() == {"retries": 30, "retries_denied": 70}
    clock.now += 11  # deposits and withdrawals expire
    assert sum(budget.try_spend() for _ in range(100)) == 10


# --- adaptive timeouts -------------------------------------------------------------


def test_adaptive_timeout_follows_p99_within_floor_and_ceiling() -> None:
    t = AdaptiveTimeout(
        TimeoutSettings(multiplier=3.0, floor_s=0.1, ceiling_s=10.0, every=8, warmup=8)
    )
    assert t.timeout(None) == 10.0  # no figures yet: the ceiling
    for _ in range(64):
        t.record(0.2)
    assert t.timeout(None) == pytest.approx(0.6)
    assert t.timeout(0.3) == 0.3  # never past the caller's deadline
    for _ in range(64):
        t.record(0.001)
    assert t.timeout(None) == pytest.approx(0.6)  # the slow ones are still in
    for _ in range(256):
        t.record(0.001)
    assert t.timeout(None) == 0.1  # the floor


def test_timed_out_attempts_raise_the_estimate_until_calls_fit() -> None:
    t = AdaptiveTimeout(
        TimeoutSettings(multiplier=3.0, floor_s=0.1, ceiling_s=10.0, every=8, warmup=8)
    )
    for _ in range(256):
        t.record(0.01)
    limit = t.timeout(None)
    assert limit == 0.1
    for _ in range(3):  # the dependency slowed to 0.5 s: every attempt is cut
        for _ in range(8):
            t.timed_out(t.timeout(None))
    assert t.timeout(None) >= 0.5
    assert t.timeouts == 24


# --- fair shares -------------------------------------------------------------------


async def test_fair_gate_serves_a_second_tenant_before_a_floods_backlog() -> None:
    gate = FairGate(GateSettings(capacity=2, share=1.0, wait_s=5.0))
    held = [await gate.acquire("flood") for _ in range(2)]
    order: list[str] = []

    async def one(tenant: str) -> None:
        taken = await gate.acquire(tenant)
        order.append(tenant)
        gate.release(tenant, taken)

    flood = [asyncio.create_task(one("flood")) for _ in range(10)]
    await asyncio.sleep(0)
    other = asyncio.create_task(one("other"))
    await asyncio.sleep(0)
    assert gate.waiting == 11
    gate.release("flood", held.pop())
    await asyncio.wait_for(other, 5)
    assert order[0] == "other"  # ahead of ten earlier flood calls
    gate.release("flood", held.pop())
    await asyncio.wait_for(asyncio.gather(*flood), 5)
    assert gate.active == 0
    assert gate.waiting == 0


async def test_fair_gate_refuses_at_once_past_the_queue_or_the_deadline() -> None:
    gate = FairGate(
        GateSettings(capacity=1, share=1.0, max_queue_per_tenant=1, wait_s=5.0)
    )
    taken = await gate.acquire("a")
    waiter = asyncio.create_task(gate.acquire("a"))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhaustedError) as refused:
        await gate.acquire("a")  # a second waiter of the same tenant
    assert refused.value.retry_after_s is not None
    with deadline.deadline_scope(0.0), pytest.raises(ResourceExhaustedError):
        await gate.acquire("b")  # no slot expected within no time
    assert gate.rejected == 2
    gate.release("a", taken)
    gate.release("a", await asyncio.wait_for(waiter, 5))
    assert gate.active == 0


async def test_fair_gate_waits_end_at_their_limit_and_leave_the_gate_whole() -> None:
    """A queued call not served within its time (wait_s, or its deadline if
    sooner) gives up with RESOURCE_EXHAUSTED; a cancelled one just leaves. Neither
    takes a slot: the next release serves the caller still waiting, and the gate
    ends empty."""
    gate = FairGate(GateSettings(capacity=1, share=1.0, wait_s=5.0))
    taken = await gate.acquire("a")
    with deadline.deadline_scope(0.05):
        late = asyncio.create_task(gate.acquire("a"))
    cancelled = asyncio.create_task(gate.acquire("b"))
    await eventually(lambda: gate.waiting == 2)
    cancelled.cancel()
    with pytest.raises(ResourceExhaustedError, match="no connection free in time"):
        await asyncio.wait_for(late, 5)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (gate.waiting, gate.rejected) == (0, 1)
    patient = asyncio.create_task(gate.acquire("c"))
    await eventually(lambda: gate.waiting == 1)
    gate.release("a", taken)
    gate.release("c", await asyncio.wait_for(patient, 5))
    assert (gate.active, gate.waiting) == (0, 0)


async def test_fair_gate_refuses_on_a_fresh_estimate_of_long_holds() -> None:
    """Just after 10 s holds, a caller whose deadline is shorter than the expected
    wait is refused at once, without queueing."""
    gate = FairGate(GateSettings(capacity=1, share=1.0, wait_s=5.0, estimate_s=60))
    gate.release("a", await gate.acquire("a") - 10.0)  # a 10 s hold, just now
    taken = await gate.acquire("a")
    with deadline.deadline_scope(1.0), pytest.raises(ResourceExhaustedError):
        await gate.acquire("a")
    assert gate.rejected == 1
    assert gate.waiting == 0
    gate.release("a", taken)


async def test_fair_gate_waits_instead_of_refusing_on_a_stale_estimate() -> None:
    """Long holds long ago (a bulk import) do not refuse the burst of reads after
    them: every caller waits for a slot, and the next release starts the mean
    hold time anew."""
    gate = FairGate(GateSettings(capacity=1, share=1.0, wait_s=5.0, estimate_s=0.0))
    gate.release("a", await gate.acquire("a") - 10.0)  # a 10 s hold, now stale
    taken = await gate.acquire("a")
    with deadline.deadline_scope(1.0):
        burst = [asyncio.create_task(gate.acquire("a")) for _ in range(20)]
    await eventually(lambda: gate.waiting == 20)
    assert gate.rejected == 0
    gate.release("a", taken)
    for task in burst:
        gate.release("a", await asyncio.wait_for(task, 5))
    assert gate.rejected == 0
    assert gate.snapshot()["mean_hold_ms"] < 1000  # the 10 s holds forgotten


async def _holds(gate: FairGate, tenant: str, seconds: float, n: int = 8) -> None:
    # ``n`` calls of ``tenant`` that held their slot ``seconds`` each.
    for _ in range(n):
        gate.release(tenant, await gate.acquire(tenant) - seconds)


async def test_fair_gate_weighs_the_share_by_hold_time() -> None:
    """While a light tenant is active, a tenant whose calls hold a slot 60 times
    longer may hold one slot, not half the pool; the light one keeps its half."""
    gate = FairGate(GateSettings(capacity=10, share=0.5, wait_s=5.0))
    await _holds(gate, "heavy", 0.060)
    await _holds(gate, "light", 0.001)
    heavy = [await gate.acquire("heavy")]
    waiting = asyncio.create_task(gate.acquire("heavy"))
    await eventually(lambda: gate.waiting == 1)  # waits with 9 slots free
    assert not waiting.done()
    light = [await gate.acquire("light") for _ in range(5)]
    assert gate.active == 6
    gate.release("heavy", heavy.pop())
    heavy.append(await asyncio.wait_for(waiting, 5))
    for taken in light:
        gate.release("light", taken)
    gate.release("heavy", heavy.pop())
    assert gate.active == 0


@pytest.mark.parametrize(
    ("by_time", "heavy_holds"),
    [
        pytest.param(True, 7, id="under eight holds measured"),
        pytest.param(False, 8, id="by_time off"),
    ],
)
async def test_fair_gate_keeps_the_plain_share(by_time: bool, heavy_holds: int) -> None:
    """With by_time off, or under eight measured holds (one slow first call, a
    partition created, must not mark a tenant heavy), a heavy tenant holds half
    the pool like anyone."""
    settings = GateSettings(capacity=10, share=0.5, wait_s=5.0, by_time=by_time)
    gate = FairGate(settings)
    await _holds(gate, "heavy", 0.060, n=heavy_holds)
    await _holds(gate, "light", 0.001)
    light = await gate.acquire("light")
    heavy = [await gate.acquire("heavy") for _ in range(5)]
    assert gate.waiting == 0
    for taken in heavy:
        gate.release("heavy", taken)
    gate.release("light", light)


async def test_fair_gate_heavy_tenant_alone_takes_the_whole_pool() -> None:
    """Weighing applies only while tenants share: alone, heavy calls use it all."""
    gate = FairGate(GateSettings(capacity=4, share=0.5, wait_s=5.0, active_s=0.0))
    await _holds(gate, "heavy", 0.060)
    heavy = [await gate.acquire("heavy") for _ in range(4)]
    assert gate.waiting == 0
    for taken in heavy:
        gate.release("heavy", taken)


async def test_fair_gate_wait_ends_with_resource_exhausted() -> None:
    gate = FairGate(GateSettings(capacity=1, share=1.0, wait_s=0.01))
    taken = await gate.acquire("a")
    with pytest.raises(ResourceExhaustedError):
        await gate.acquire("b")
    assert gate.waiting == 0
    gate.release("a", taken)
    gate.release("b", await gate.acquire("b"))
    assert gate.active == 0


async def test_fair_gate_a_tenant_alone_may_take_every_slot() -> None:
    gate = FairGate(GateSettings(capacity=4, share=0.5, wait_s=0.01))
    alone = [await gate.acquire("a") for _ in range(4)]  # nobody else: all of it
    for taken in alone:
        gate.release("a", taken)
    assert gate.active == 0


async def test_fair_gate_caps_a_tenant_at_its_share_while_another_is_active() -> None:
    gate = FairGate(GateSettings(capacity=4, share=0.5, wait_s=0.01))
    other = await gate.acquire("b")
    first = [await gate.acquire("a") for _ in range(2)]
    with pytest.raises(ResourceExhaustedError):
        await gate.acquire("a")  # half the pool while b holds a slot
    gate.release("b", other)
    with pytest.raises(ResourceExhaustedError):
        await gate.acquire("a")  # b took one within active_s: still half
    assert gate.active == 2  # b could come back and find a slot free
    for taken in first:
        gate.release("a", taken)
    assert gate.active == 0


async def test_fair_gate_cap_lifts_once_the_other_tenant_is_gone() -> None:
    gate = FairGate(GateSettings(capacity=4, share=0.5, wait_s=0.01, active_s=0.0))
    gate.release("b", await gate.acquire("b"))  # b came and went
    held = [await gate.acquire("a") for _ in range(4)]
    for taken in held:
        gate.release("a", taken)
    assert gate.active == 0


# --- the registry ------------------------------------------------------------------


def test_retries_are_spent_from_the_failed_dependencys_budget() -> None:
    protection = Protection(budget=BudgetSettings(ratio=0.0, min_per_s=0.1, ttl_s=10))
    cortex = protection.peer("cortex")
    failure = MeshUnavailableError("peer cortex unavailable")
    failure.peer = "cortex"
    assert protection.may_retry(failure)  # the floor: one retry in 10 s
    assert not protection.may_retry(failure)
    assert cortex.budget.snapshot() == {"retries": 1, "retries_denied": 1}
    assert protection.may_retry(StoreUnavailableError("down"))  # postgres's own
    assert not protection.may_retry(CircuitOpenError("postgres", 0.5))
    assert protection.dependency_of(ValidationError("x", "bad")) is None
    assert set(protection.snapshot()) == {"postgres", "redis", "mesh.cortex"}


def test_check_refuses_while_open_without_taking_a_probe_permit() -> None:
    clock = Clock()
    b = breaker(clock, half_open_calls=1)
    b.check()  # closed: passes
    calls(b, Outcome.FAILURE, 10)
    with pytest.raises(CircuitOpenError):
        b.check()
    clock.now += 1.0
    b.check()  # the wait is over: the next allow() is the probe
    b.check()
    b.record(b.allow(), Outcome.SUCCESS, 0.001)
    assert b.state is BreakerState.CLOSED


def test_check_refuses_during_half_open_once_every_probe_is_out() -> None:
    clock = Clock()
    b = breaker(clock, half_open_calls=2)
    calls(b, Outcome.FAILURE, 10)
    clock.now += 1.0
    first = b.allow()
    b.check()  # one permit left
    second = b.allow()
    with pytest.raises(CircuitOpenError):
        b.check()  # nothing left: fail fast, before any other work
    b.record(first, Outcome.SUCCESS, 0.001)
    b.record(second, Outcome.SUCCESS, 0.001)
    b.check()
    assert b.state is BreakerState.CLOSED


async def test_attempt_watch_cuts_a_late_attempt_and_takes_the_cancel_back() -> None:
    watch = AttemptWatch(tick_s=0.001)
    loop = asyncio.get_running_loop()
    never = loop.create_future()

    async def late() -> str:
        task = asyncio.current_task()
        assert task is not None
        watch.arm(task, loop.time() + 0.01)
        try:
            await never
        except asyncio.CancelledError:
            if watch.disarm(task):
                assert task.cancelling() == 0  # the cancel is taken back
                return "cut"
            raise
        return "finished"

    assert await asyncio.wait_for(late(), 5) == "cut"


async def test_attempt_watch_leaves_a_prompt_attempt_alone() -> None:
    watch = AttemptWatch(tick_s=0.001)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    watch.arm(task, loop.time() + 60)

    async def late() -> bool:
        # Armed already late: cut at the watcher's first scan.
        me = asyncio.current_task()
        assert me is not None
        watch.arm(me, loop.time())
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            return watch.disarm(me)
        return False

    assert await asyncio.wait_for(late(), 5)  # the watcher has scanned...
    assert not watch.disarm(task)  # ...and left the prompt attempt alone
    await watch.aclose()


async def test_fair_gate_lakes_own_work_does_not_cap_a_tenant() -> None:
    gate = FairGate(GateSettings(capacity=8, share=0.5, wait_s=0.01))
    system = [await gate.acquire("") for _ in range(4)]  # Lake's own: its share
    with pytest.raises(ResourceExhaustedError):
        await gate.acquire("")  # never more, though slots are free
    held = [await gate.acquire("a") for _ in range(4)]  # a is still alone: all
    assert gate.active == 8
    for taken in system:
        gate.release("", taken)
    for taken in held:
        gate.release("a", taken)
    assert gate.active == 0
