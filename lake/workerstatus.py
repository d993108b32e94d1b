"""
Operator figures summed over `lake serve`'s worker processes.

Each worker writes its own figures (``lake status``) to a file in a directory the
parent made, every second; the worker that answers GetStatus adds the others'
latest to its own. Counters are summed; means (``*_ms``, ``*_us``, ratios) are
averaged over the workers that report them; figures of the whole database or
service (``state``, ``events_pending``) are the answering worker's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from lake.workers import LoopWorker

__all__ = ["StatusBoard", "StatusPublisher", "merge_reports"]

log = structlog.get_logger(__name__)

# Figures of the whole service, not of one process: never summed.
_SHARED = {"state", "events_pending"}
_MEANS = ("_ms", "_us", "ratio", "_rate")


class StatusBoard:
    """
    The directory the workers share their figures through (none: one process).
    """

    def __init__(self, *, directory: str, index: int, count: int) -> None:
        self._dir = Path(directory) if directory else None
        self._index = index
        self._count = count

    @property
    def shared(self) -> bool:
        """
        True when there are other workers to add up.
        """
        return self._dir is not None and self._count > 1

    def publish(self, report: Any, *, kind: str = "worker") -> None:
        """
        Write this worker's figures of ``kind`` (atomically: others never read
        half a file).
        """
        if self._dir is None:
            return
        target = self._dir / f"{kind}-{self._index}.json"
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(report, default=str))
        os.replace(partial, target)

    def gather(self, own: Mapping[str, Any]) -> dict[str, Any]:
        """
        ``own`` figures plus the other workers' latest ones.
        """
        if self._dir is None or not self.shared:
            return dict(own)
        reports: list[Mapping[str, Any]] = [own, *self.others()]
        merged = merge_reports(reports)
        merged["workers"] = {"count": self._count, "reporting": len(reports)}
        return merged

    def others(self, kind: str = "worker") -> list[Any]:
        """
        The other workers' latest figures of ``kind`` (those written so far).
        """
        found: list[Any] = []
        if self._dir is None or not self.shared:
            return found
        for index in range(self._count):
            if index == self._index:
                continue
            try:
                found.append(
                    json.loads((self._dir / f"{kind}-{index}.json").read_text())
                )
            except (OSError, ValueError):
                continue  # not written yet, or gone: the others still count
        return found


def merge_reports(reports: list[Mapping[str, Any]]) -> dict[str, Any]:
    """
    Sum counters, average means, keep the first report's shared figures.
    """
    first = reports[0]
    out: dict[str, Any] = {}
    for key in first.keys() | {k for r in reports[1:] for k in r}:
        values = [r[key] for r in reports if key in r]
        if key in _SHARED:
            out[key] = first.get(key, values[0])
        else:
            out[key] = _merge_values(key, values)
    return out


def _merge_values(key: str, values: list[Any]) -> Any:
    if all(isinstance(v, Mapping) for v in values):
        return merge_reports(values)
    numbers = [
        v for v in values if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if len(numbers) != len(values):
        return values[0]
    if key.endswith(_MEANS):
        return round(sum(numbers) / len(numbers), 3)
    return sum(numbers)


class StatusPublisher(LoopWorker):
    """
    Writes this worker's figures to the board every ``interval`` seconds.
    """

    name = "status-publisher"

    def __init__(
        self,
        board: StatusBoard,
        report: Callable[[], Awaitable[dict[str, Any]]],
        *,
        interval: float = 1.0,
    ) -> None:
        super().__init__()
        self._board = board
        self._report = report
        self._interval = interval

    async def run(self) -> None:
        """
        Publish until cancelled; a failed write is logged and tried again.
        """
        while True:
            try:
                self._board.publish(await self._report())
            except OSError as exc:
                log.warning("status_publish_failed", reason=exc.strerror or "io error")
            await asyncio.sleep(self._interval)
