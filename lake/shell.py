"""
Shell commands: call the API with JSON, stream points from CSV, make tokens, and
run the reference peers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from lake.api.channels import client_for, tls_options
from lake.cli_quotas import register_quotas
from lake.cli_tokens import register_tokens
from lake.cli_usage import register_usage
from lake.console import (
    EXIT_REFUSED,
    CsvError,
    answer_or_exit,
    integral,
    read_points,
    unary_methods,
)
from lake.logs import configure_logging

__all__ = ["register"]


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
    return tls_options(fn)


def register(
    group: click.Group, target: Callable[[click.Context, str | None], str]
) -> None:
    """
    Add the shell commands to ``group``.
    """

    register_tokens(group, target)
    register_usage(group, target)
    register_quotas(group, target)

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
        Call any unary RPC on Lake's port with JSON in and out, e.g.
        lake call Vectors.Search -d '{"collection": "docs", "vector": [1, 0]}'.

        Reaches Vectors, TimeSeries, Spatial, LakeHealth and grpc.health.v1.Health
        (Health.Check). Prints every field, zero values included. Exit codes: 0 ok,
        1 refused (by the server, or a bad method or JSON), 2 no server answers.
        """
        from google.protobuf import json_format, message_factory

        methods = unary_methods()
        rpc = methods.get(method)
        if rpc is None:
            names = sorted(m for m in methods if m.count(".") == 1)
            msg = f"unknown method {method!r}; one of: {', '.join(names)}"
            raise click.ClickException(msg)
        request_type = message_factory.GetMessageClass(rpc.input_type)
        response_type = message_factory.GetMessageClass(rpc.output_type)
        try:
            request = json_format.Parse(
                data if data is not None else sys.stdin.read(), request_type()
            )
        except json_format.ParseError as exc:
            msg = f"bad request JSON: {exc}"
            raise click.ClickException(msg) from None
        address = target(ctx, address)  # resolved once: named in messages
        path = f"/{rpc.containing_service.full_name}/{rpc.name}"
        with client_for(address, token=token, timeout=timeout) as lake:
            reply = answer_or_exit(
                lake.channel,
                "call",
                address,
                lambda: lake.invoke(path, request, response_type),
            )
        shown = json_format.MessageToDict(
            reply,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        click.echo(json.dumps(integral(shown), indent=2, ensure_ascii=False))

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
        Stream points from a CSV of "timestamp,value" rows to one series, with a
        progress bar. The whole file is checked first: a bad row is reported as
        FILE:LINE:COLUMN and nothing is sent (exit 1). Timestamps are ISO 8601 with
        a zone or epoch seconds; values finite numbers; a header line, empty lines
        and lines starting with # are skipped.
        """
        from lake.client import PointsBatch

        tag_map: dict[str, str] = {}
        for tag in tags:
            key, sep, value = tag.partition("=")
            if not sep or not key:
                msg = f"{tag!r} is not key=value"
                raise click.BadParameter(msg, param_hint="--tag")
            tag_map[key] = value
        try:
            stamps, values = read_points(csv_file, csv_file.name)
        except CsvError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_REFUSED)

        def batches(bar: Any) -> Iterator[PointsBatch]:
            for i in range(0, len(stamps), batch):
                yield PointsBatch(
                    metric,
                    tags=tag_map,
                    timestamps_us=stamps[i : i + batch],
                    values=values[i : i + batch],
                )
                bar.update(len(stamps[i : i + batch]))

        address = target(ctx, address)  # resolved once: named in messages
        with (
            client_for(address, token=token, timeout=timeout) as lake,
            click.progressbar(
                length=len(stamps), label="writing", file=sys.stderr
            ) as bar,
        ):
            reply = answer_or_exit(
                lake.channel,
                "points write",
                address,
                lambda: lake.write_stream(batches(bar)),
            )
        click.echo(json.dumps({"written": reply.written}))
