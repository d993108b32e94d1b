"""
What an acquire that times out means: a full pool (RESOURCE_EXHAUSTED) or a
database that does not answer a new connection (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio

import pytest

from lake.errors import ResourceExhaustedError, StoreUnavailableError
from lake.stores.database import Database


class HangingPool:
    """An asyncpg-like pool whose acquire never returns; ``in_use`` of ``max_size``
    connections lent out."""

    def __init__(self, in_use: int, max_size: int = 2) -> None:
        self.in_use = in_use
        self.max_size = max_size

    async def acquire(self) -> object:
        await asyncio.Event().wait()
        raise AssertionError

    def get_size(self) -> int:
        return self.in_use

    def get_idle_size(self) -> int:
        return 0

    def get_min_size(self) -> int:
        return 1

    def get_max_size(self) -> int:
        return self.max_size


async def test_acquire_timeout_on_a_full_pool_is_resource_exhausted():
    db = Database(HangingPool(in_use=2), acquire_timeout=0.01)
    with pytest.raises(ResourceExhaustedError):
        async with db.connection():
            pass
    assert db.metrics()["acquire_timeouts"] == 1


async def test_acquire_timeout_while_connecting_is_unavailable():
    """A free slot, but the new connection got no answer (a black-holed server):
    UNAVAILABLE, not RESOURCE_EXHAUSTED (which tells clients Lake is overloaded)."""
    db = Database(HangingPool(in_use=0), acquire_timeout=0.01)
    with pytest.raises(StoreUnavailableError, match="did not answer in time"):
        async with db.connection():
            pass
    assert db.metrics()["acquire_timeouts"] == 0
