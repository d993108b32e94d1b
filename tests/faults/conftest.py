"""
Lake over fault proxies: PostgreSQL and Redis each reached through a ``FaultProxy``
on loopback (the mesh tests put one before their peer too), so a test can slow,
cut, black-hole or refuse any of them while Lake runs in the test's own loop.

Each test gets a fresh database (``database``), its own proxies and short bounds
(``FAST``): deadlines of a second or two, so a hang shows as a failure, not a stall.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from lake.container import Container, aresolve, create_container
from lake.manager import ServiceManager
from tests.faults.proxy import FaultProxy

# Inside the retention window whatever day the tests run.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)

# Short bounds for fault tests: (section, key) -> value.
FAST: dict[tuple[str, str], Any] = {
    ("operations", "timeout"): 2.0,
    ("postgres", "acquire_timeout"): 0.5,
    ("postgres", "connect_timeout"): 1.0,
    ("postgres", "min_size"): 1,
    ("postgres", "max_size"): 4,
    ("health", "check_timeout"): 0.5,
    ("mesh", "call_timeout"): 1.0,
    ("startup", "attempt_timeout"): 3.0,
}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def via(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{proxy.address}"))


@pytest.fixture
async def pg_proxy(servers) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(*host_port(servers["postgres"].url)) as proxy:
        yield proxy


@pytest.fixture
async def redis_proxy(servers) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(*host_port(servers["redis"].url)) as proxy:
        yield proxy


def fault_settings(
    base: dict[str, Any], pg: FaultProxy, redis: FaultProxy
) -> dict[str, Any]:
    """``base`` (the test's live settings) through the proxies, with FAST bounds."""
    values = copy.deepcopy(base)
    values["postgres"]["dsn"] = via(values["postgres"]["dsn"], pg)
    values["redis"]["url"] = via(values["redis"]["url"], redis)
    for (section, key), value in FAST.items():
        values[section][key] = value
    return values


@pytest.fixture
def proxied_settings(lake_settings, pg_proxy, redis_proxy) -> dict[str, Any]:
    return fault_settings(lake_settings, pg_proxy, redis_proxy)


@pytest.fixture
def proxied_container(proxied_settings) -> Container:
    return create_container(proxied_settings)


@pytest.fixture
async def lake(
    proxied_container, pg_proxy, redis_proxy
) -> AsyncIterator[ServiceManager]:
    """A started manager whose PostgreSQL and Redis go through the proxies;
    the proxies are cleared before it stops, so teardown never waits on a fault."""
    manager: ServiceManager = await aresolve(proxied_container.manager)
    await manager.start()
    try:
        yield manager
    finally:
        for proxy in (pg_proxy, redis_proxy):
            await proxy.enable()
        await manager.stop()
