"""
Shell commands: call the API with JSON, stream points from CSV, make tokens, and
run the reference peers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import grpc

from lake.cli_tokens import register_tokens
from lake.logs import configure_logging

__all__ = ["register"]


def _metadata(token_value: str | None) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token_value}"),) if token_value else ()


def _rpc_failed(exc: grpc.RpcError) -> None:
    if isinstance(exc, grpc.Call):
        click.echo(f"lake: {exc.code().name}: {exc.details()}", err=True)
    else:
        click.echo("lake: call failed", err=True)
    sys.exit(1)


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


def register(
    group: click.Group, target: Callable[[click.Context, str | None], str]
) -> None:
    """
    Add the shell commands to ``group``.
    """

    register_tokens(group, target)

    @group.group()
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

    @group.command("call")
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
        with grpc.insecure_channel(target(ctx, address)) as channel:
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

    @group.group()
    def points() -> None:
        """
        Time-series points from the shell.
        """

    @points.command("write")
    @click.argument("metric")
    @click.argument("csv_file", type=click.File("r"))
    @click.option("--tag", "tags", multiple=True, help="Series tag as key=value.")
    @click.option(
        "--batch", default=5000, show_default=True, help="Points per message."
    )
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
            grpc.insecure_channel(target(ctx, address)) as channel,
            click.progressbar(
                length=len(rows), label="writing", file=sys.stderr
            ) as bar,
        ):
            stub = lake_pb2_grpc.TimeSeriesStub(channel)
            try:
                reply = stub.WriteStream(
                    messages(bar), timeout=timeout, metadata=_metadata(token)
                )
            except grpc.RpcError as exc:
                _rpc_failed(exc)
        click.echo(json.dumps({"written": reply.written}))
