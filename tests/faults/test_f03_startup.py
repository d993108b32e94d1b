"""
F3: PostgreSQL down when Lake starts. Bounded retries: Lake serves once PostgreSQL
comes, or gives up with one clear error (``lake serve`` exits non-zero) that names
no DSN and no password, and never hangs.
"""

from __future__ import annotations

import asyncio
import copy
import io
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import stamina

from lake.container import aresolve, create_container
from lake.errors import LifecycleError
from lake.logs import configure_logging
from lake.manager import State
from lake.resources.embedded import free_port
from tests.faults.proxy import ProxyThread
from tests.waiting import eventually

SLACK = 3.0
PASSWORD = "F3-Inl1ne-Secret"


def startup(settings: dict[str, Any], attempts: int, timeout: float) -> dict[str, Any]:
    values: dict[str, Any] = copy.deepcopy(settings)
    values["startup"].update(
        attempts=attempts, timeout=timeout, wait_initial=0.1, wait_max=0.3
    )
    return values


async def test_f03_postgres_late_at_startup_then_lake_serves(
    proxied_settings, pg_proxy
):
    """PostgreSQL unreachable for the first attempts: Lake keeps trying (bounded)
    and starts once it answers, without a restart."""
    stamina.set_testing(False)  # real backoff between the start-up attempts
    real = pg_proxy.upstream
    pg_proxy.upstream = ("127.0.0.1", free_port())  # nothing listens there
    manager = await aresolve(
        create_container(startup(proxied_settings, 20, 15.0)).manager
    )
    starting = asyncio.create_task(manager.start())
    try:
        await eventually(lambda: pg_proxy.stats.refused >= 2)
        assert not starting.done()
        pg_proxy.upstream = real
        await asyncio.wait_for(starting, 15.0)
        assert manager.state is State.RUNNING
        assert (await manager.health()).ready
    finally:
        starting.cancel()
        await manager.stop()


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
async def test_f03_postgres_never_up_fails_start_in_bounded_time(
    proxied_settings, pg_proxy, fault
):
    """Connections reset, or never answered: start-up fails with LifecycleError
    within its timeout + slack; the password in the DSN is in no log line."""
    stamina.set_testing(False)
    if fault == "reset":
        pg_proxy.upstream = ("127.0.0.1", free_port())
    else:
        pg_proxy.blackhole()
    settings = startup(proxied_settings, 3, 2.0)
    settings["postgres"]["dsn"] = settings["postgres"]["dsn"].replace(
        "postgres@", f"postgres:{PASSWORD}@"
    )
    settings["startup"]["attempt_timeout"] = 1.0
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    manager = await aresolve(create_container(settings).manager)
    started = time.monotonic()
    with pytest.raises(LifecycleError, match="start-up failed") as info:
        await manager.start()
    assert time.monotonic() - started < 2.0 + 1.0 + SLACK
    assert manager.state is State.STOPPED
    logged = stream.getvalue()
    assert "retrying" in logged
    for text in (logged, str(info.value)):
        assert PASSWORD not in text
        assert pg_proxy.address not in text  # no DSN either
    pg_proxy.clear()


async def test_f03_lake_serve_exits_non_zero_when_postgres_never_answers(
    servers, database
):
    """``lake serve`` against a black-holed PostgreSQL (a proxy in a thread):
    exits non-zero within its start-up bounds, naming neither DSN nor password."""
    pg, rd = servers["postgres"], servers["redis"]
    host, port = pg.url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with ProxyThread(host, int(port)) as proxy:
        proxy.blackhole()
        dsn = f"postgresql://postgres:{PASSWORD}@{proxy.address}/postgres"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
        env.update(
            LAKE_ENV="testing",
            LAKE_GRPC__ADDRESS=f"127.0.0.1:{free_port()}",
            LAKE_LOGGING__LEVEL="INFO",
            LAKE_POSTGRES__DSN=dsn,
            LAKE_POSTGRES__CONNECT_TIMEOUT="1",
            LAKE_REDIS__URL=rd.url,
            LAKE_REDIS__PASSWORD=rd.password,
            LAKE_STARTUP__ATTEMPTS="2",
            LAKE_STARTUP__TIMEOUT="2",
            LAKE_STARTUP__ATTEMPT_TIMEOUT="1",
        )
        started = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "lake", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        took = time.monotonic() - started
        assert proxy.stats.connections >= 1  # it did try
    assert done.returncode != 0
    assert took < 2.0 + 1.0 + 10.0  # start-up bounds plus interpreter start
    assert "start-up failed" in done.stderr
    for text in (done.stderr, done.stdout):
        assert PASSWORD not in text
        assert proxy.address not in text
