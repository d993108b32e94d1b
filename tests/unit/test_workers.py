"""
The background workers: the relay keeps delivering while there is work, the
upkeep loop runs store upkeep, and both stop when asked.
"""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from lake.errors import MeshUnavailableError
from lake.models import MaintenanceReport, RelayReport
from lake.workers import RelayWorker, UpkeepWorker


class Delivery:
    """Answers relay rounds from a script; sets ``done`` once it runs out."""

    def __init__(self, script: list[RelayReport | Exception]) -> None:
        self.script = script
        self.calls = 0
        self.done = asyncio.Event()

    async def deliver_events(self) -> RelayReport:
        self.calls += 1
        step = self.script.pop(0) if self.script else RelayReport(0)
        if not self.script:
            self.done.set()
        if isinstance(step, Exception):
            raise step
        return step


class Upkeep:
    """Counts upkeep rounds; sets ``done`` after the first."""

    def __init__(self) -> None:
        self.calls = 0
        self.done = asyncio.Event()

    async def maintain(self) -> MaintenanceReport:
        self.calls += 1
        self.done.set()
        return MaintenanceReport(created=["points_2026_01_01"])


async def test_the_relay_goes_on_at_once_while_events_are_delivered():
    """Rounds that deliver are followed at once; an empty round waits the interval."""
    delivery = Delivery([RelayReport(5), RelayReport(3), RelayReport(0)])
    worker = RelayWorker(delivery, interval=60.0)
    worker.start()
    await asyncio.wait_for(delivery.done.wait(), 10)
    await worker.stop()
    await worker.stop()
    assert delivery.calls == 3


async def test_a_failing_relay_round_is_logged_and_waited_out():
    """A failed round is logged without a traceback and not retried at once."""
    delivery = Delivery([MeshUnavailableError("stream peer unavailable")])
    worker = RelayWorker(delivery, interval=60.0)
    with capture_logs() as logs:
        worker.start()
        await asyncio.wait_for(delivery.done.wait(), 10)
        await worker.stop()
    assert delivery.calls == 1
    failed = [e for e in logs if e["event"] == "relay_failed"]
    assert [(e["error"], e["log_level"]) for e in failed] == [
        ("stream peer unavailable", "warning")
    ]


async def test_upkeep_runs_every_interval_and_logs_what_it_did():
    """Each round reaches the store and logs the partitions created."""
    upkeep = Upkeep()
    worker = UpkeepWorker(upkeep, interval=0.0)
    with capture_logs() as logs:
        worker.start()
        await asyncio.wait_for(upkeep.done.wait(), 10)
        await worker.stop()
    assert upkeep.calls >= 1
    done = [e for e in logs if e["event"] == "upkeep_done"]
    assert done[0]["created"] == ["points_2026_01_01"]
