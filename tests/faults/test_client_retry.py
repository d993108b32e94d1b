"""
lake.client and its retry policy against a real Lake whose PostgreSQL goes away
(through a fault proxy): an open breaker reaches the caller as CircuitOpenError
with the server's pushback, and once PostgreSQL is back a call made while the
breaker still waits succeeds without the caller retrying.
"""

from __future__ import annotations

from datetime import timedelta

from lake.client import LakeClient, Point
from lake.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    UnavailableError,
)
from tests.api.conftest import running_lake
from tests.faults.conftest import T0


def points(i: int) -> list[Point]:
    return [Point(T0 + timedelta(microseconds=i), 1.0)]


async def test_an_open_breaker_is_circuit_open_and_retried_through(
    proxied_settings, pg_proxy
):
    """PostgreSQL refused: CircuitOpenError naming postgres, its retry_after_s the
    pushback (at most the breaker's open wait); PostgreSQL back: the first call
    succeeds, the policy's retries riding over the breaker's wait."""
    open_wait = proxied_settings["protection"]["breaker"]["open_wait_s"]
    async with (
        running_lake(proxied_settings) as (server, _, _),
        LakeClient(server.address, token="token-a", timeout=10) as lake,
    ):
        await lake.write_points("retry", points(0))
        await pg_proxy.disable()
        refused: CircuitOpenError | None = None
        for i in range(1, 40):
            try:
                await lake.write_points("retry", points(i), timeout=5)
            except CircuitOpenError as exc:
                refused = exc
                break
            except (UnavailableError, DeadlineExceededError):
                continue
        assert refused is not None
        assert refused.dependency == "postgres"
        assert refused.retry_after_s is not None
        assert 0 < refused.retry_after_s <= open_wait
        await pg_proxy.enable()
        # One call, no loop: whatever remains of the breaker's wait is the
        # pushback of a first attempt, which the policy retries after.
        written = await lake.write_points("retry", points(100))
        assert written.written == 1
