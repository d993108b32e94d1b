"""
Shared fixtures: fast stamina retries, clean structlog, test settings.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina
import structlog

from lake.config import load_settings


def pytest_configure(config: pytest.Config) -> None:
    """
    Give each session a temporary root of its own.

    As root, the embedded PostgreSQL runs as another OS user that must traverse
    the directories above its data; every pytest session resets its shared
    ``pytest-of-<user>`` root to 0700, which would cut a concurrently running
    session's database off from its files.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        base = Path(tempfile.mkdtemp(prefix="lake-pytest-"))
        config.option.basetemp = str(base)
        config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))


# Suites to leave out while iterating (`-m "not slow and not fault"`); CI runs all.
# The cluster suite is slow too, and has a marker of its own to run it alone.
_FAULT_DIRS = ("faults",)
_CLUSTER_DIRS = ("cluster",)
_SLOW_FILES = {
    "test_fuzz.py",
    "test_properties.py",
    "test_workers.py",
    "test_tls.py",
    "test_tls_api.py",
    "test_cli.py",
    "test_cli_checks.py",
    "test_cli_truth.py",
    "test_token_cli.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark the fault suite, the cluster suite and the slow suites by where they live.
    """
    for item in items:
        path = Path(str(item.fspath))
        if path.parent.name in _FAULT_DIRS:
            item.add_marker(pytest.mark.fault)
        elif path.parent.name in _CLUSTER_DIRS:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
        elif path.name in _SLOW_FILES and path.parent.name in ("api", "integration"):
            item.add_marker(pytest.mark.slow)


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
