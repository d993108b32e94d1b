"""
Health checks: time boxes, redacted reasons, and the aggregation rules.
"""

from __future__ import annotations

import asyncio

import pytest

from lake.errors import StoreUnavailableError
from lake.health import Check, ComponentHealth, Status, aggregate, run_checks


def comp(name: str, status: Status, critical: bool) -> ComponentHealth:
    return ComponentHealth(name, status, 1.0, "", critical)


@pytest.mark.parametrize(
    ("statuses", "expected", "ready"),
    [
        ({"postgres": Status.UP, "redis": Status.UP}, Status.UP, True),
        ({"postgres": Status.UP, "redis": Status.DOWN}, Status.DEGRADED, True),
        ({"postgres": Status.DEGRADED, "redis": Status.UP}, Status.DEGRADED, True),
        ({"postgres": Status.DOWN, "redis": Status.UP}, Status.DOWN, False),
        ({"postgres": Status.DOWN, "redis": Status.DOWN}, Status.DOWN, False),
    ],
)
def test_aggregation_rules(statuses, expected, ready):
    """Critical DOWN makes Lake DOWN and unready; anything else not UP degrades it."""
    critical = {"postgres": True, "redis": False}
    report = aggregate([comp(n, s, critical[n]) for n, s in statuses.items()])
    assert report.status is expected
    assert report.ready is ready


def test_not_live_is_never_ready():
    """A report from a loop that is not live is not ready, whatever the parts say."""
    report = aggregate([comp("postgres", Status.UP, True)], live=False)
    assert not report.ready
    assert report.status is Status.DOWN


async def test_a_silent_check_is_down_within_its_time_box():
    """A check that never answers is DOWN with a timeout reason."""

    async def silent() -> str | None:
        await asyncio.sleep(30)
        return None

    report = await run_checks([Check("postgres", silent, critical=True)], time_box=0.05)
    c = report.component("postgres")
    assert c.status is Status.DOWN
    assert c.reason == "no answer within 0.05s"
    assert c.latency_ms < 5_000


async def test_reasons_are_redacted():
    """Foreign exception text never becomes a reason; Lake's own messages do."""

    async def leaky() -> str | None:
        msg = 'password authentication failed for "postgres" using hunter2'
        raise RuntimeError(msg)

    async def lake_error() -> str | None:
        msg = "database refused the connection"
        raise StoreUnavailableError(msg)

    async def refused() -> str | None:
        raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 5432)")

    report = await run_checks(
        [
            Check("a", leaky, True),
            Check("b", lake_error, True),
            Check("c", refused, True),
        ],
        time_box=1.0,
    )
    reasons = {c.name: c.reason for c in report.components}
    assert reasons == {
        "a": "check failed",
        "b": "database refused the connection",
        "c": "connection refused",
    }


async def test_a_degraded_answer_is_degraded_with_its_reason():
    """A probe returning a reason is DEGRADED, and Lake stays ready."""

    async def slow() -> str | None:
        return "replication lag 30s"

    report = await run_checks([Check("postgres", slow, critical=True)], time_box=1.0)
    assert report.component("postgres").status is Status.DEGRADED
    assert report.component("postgres").reason == "replication lag 30s"
    assert report.ready


async def test_checks_run_concurrently():
    """Each check can only finish if the other is running at the same time."""
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a() -> str | None:
        a_started.set()
        await b_started.wait()
        return None

    async def b() -> str | None:
        b_started.set()
        await a_started.wait()
        return None

    report = await run_checks([Check("a", a, True), Check("b", b, True)], time_box=1.0)
    assert report.status is Status.UP
