"""
Real PostgreSQL and Redis for the integration tests.

The session starts both from the embedded wheels, unless LAKE_TEST_POSTGRES_DSN /
LAKE_TEST_REDIS_URL name servers to use instead. Nothing here skips: a missing server
fails the run. Each test gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from lake.config import load_settings
from lake.container import Container, aresolve, create_container
from lake.manager import ServiceManager
from lake.resources.embedded import Endpoint, embedded_servers


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[dict[str, Endpoint]]:
    """
    PostgreSQL and Redis endpoints for the whole session.
    """
    pg_dsn = os.environ.get("LAKE_TEST_POSTGRES_DSN", "")
    redis_url = os.environ.get("LAKE_TEST_REDIS_URL", "")
    data_dir = tmp_path_factory.mktemp("servers")
    with embedded_servers(data_dir, postgres=not pg_dsn, redis=not redis_url) as ends:
        if pg_dsn:
            ends["postgres"] = Endpoint(
                pg_dsn, os.environ.get("LAKE_TEST_POSTGRES_PASSWORD", "")
            )
        if redis_url:
            ends["redis"] = Endpoint(redis_url, "")
        yield ends


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def database(servers) -> AsyncIterator[str]:
    """
    A fresh, empty database for one test; its DSN. Dropped afterwards.
    """
    pg = servers["postgres"]
    name = f"lake_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg.url, password=pg.password or None)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(pg.url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def live_settings(servers: dict[str, Endpoint], dsn: str) -> dict[str, Any]:
    values = load_settings("testing")
    values["postgres"].update(dsn=dsn, password=servers["postgres"].password)
    values["redis"].update(url=servers["redis"].url, password=servers["redis"].password)
    return values


@pytest.fixture
def lake_settings(servers, database) -> dict[str, Any]:
    """
    Testing settings pointed at the session's servers and this test's database.
    """
    return live_settings(servers, database)


@pytest.fixture
def container(lake_settings) -> Container:
    return create_container(lake_settings)


@pytest.fixture
async def manager(container) -> AsyncIterator[ServiceManager]:
    """
    A started manager over real PostgreSQL and Redis; stopped afterwards.
    """
    mgr: ServiceManager = await aresolve(container.manager)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.stop()
