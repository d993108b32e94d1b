"""
Shared fixtures: fast stamina retries, clean structlog, test settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import stamina
import structlog

from lake.config import load_settings


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    """
    No backoff waits in tests, and at most three attempts per retried call.
    """
    stamina.set_testing(True, attempts=3, cap=True)
    yield
    stamina.set_testing(False)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def settings() -> dict[str, Any]:
    """
    The testing profile, with placeholder addresses that nothing listens on.
    """
    values = load_settings("testing")
    values["postgres"]["dsn"] = "postgresql://lake@127.0.0.1:1/lake"
    values["redis"]["url"] = "redis://127.0.0.1:1/0"
    return values


# Real PostgreSQL and Redis for the integration and API tests (started on first use).
from tests.servers import (  # noqa: E402
    container,
    database,
    lake_settings,
    manager,
    servers,
)

__all__ = ["container", "database", "lake_settings", "manager", "servers"]
