"""
The version reader never holds a read longer than its timeout, and closing it
releases its readers.
"""

from __future__ import annotations

import asyncio

import pytest

from lake.errors import StoreUnavailableError
from lake.stores.versions import VersionReader


class SilentConnection:
    """A connection whose queries never answer (a network that drops packets)."""

    def __init__(self) -> None:
        self.terminated = False
        self.asked = asyncio.Event()

    def is_closed(self) -> bool:
        return self.terminated

    async def fetch(self, *args):
        self.asked.set()
        await asyncio.Event().wait()

    def terminate(self) -> None:
        self.terminated = True


async def test_a_silent_connection_fails_the_batch_within_the_timeout():
    """A query that never answers ends in TimeoutError; the reader is marked down
    and its connection dropped, so the next reads go to the pool."""
    conn = SilentConnection()

    async def connect():
        return conn

    reader = VersionReader(connect, timeout=0.05, retry_after=60.0)
    with pytest.raises(TimeoutError):
        await reader.generation("t1", "spatial")
    assert conn.terminated
    assert not reader.usable
    await reader.aclose()


async def test_closing_the_reader_releases_waiting_readers():
    """Readers waiting on a batch when the reader closes get a store error (the
    caller falls back to the pool), not a cancellation."""
    conn = SilentConnection()

    async def connect():
        return conn

    reader = VersionReader(connect, timeout=30.0)
    first = asyncio.create_task(reader.generation("t1", "a"))
    await conn.asked.wait()  # the first batch is in flight
    second = asyncio.create_task(reader.generation("t1", "b"))  # the next batch
    await asyncio.sleep(0)
    await reader.aclose()
    for task in (first, second):
        with pytest.raises(StoreUnavailableError):
            await task
