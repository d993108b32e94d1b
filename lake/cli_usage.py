"""
``lake usage``: metered usage per tenant and operation over a range, read from a
running server (lake.v1.Usage/GetUsage).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from lake.api.channels import client_for, tls_options
from lake.console import answer_or_exit
from lake.errors import LakeError

__all__ = ["register_usage", "summed"]

_FIGURES = ("calls", "items_in", "items_out", "bytes_in", "bytes_out")


def _since(text: str) -> datetime:
    """
    ``24h``, ``7d``... before now, or an ISO 8601 time with a zone.
    """
    from lake.tokens import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(text)
    except LakeError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        msg = "a duration such as 24h or 7d, or an ISO 8601 time with a zone"
        raise click.BadParameter(msg, param_hint="--since")
    return when


def summed(rows: Any) -> list[dict[str, Any]]:
    """
    Usage rows (``lake.client.UsageRow`` or GetUsage's) summed per (tenant,
    operation), in that order.
    """
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        into = found.setdefault(
            (row.tenant, row.operation),
            {
                "tenant": row.tenant,
                "operation": row.operation,
                **dict.fromkeys(_FIGURES, 0),
                "failures": {},
                "db_ms": 0.0,
            },
        )
        for name in _FIGURES:
            into[name] += getattr(row, name)
        for code, count in row.failures.items():
            into["failures"][code] = into["failures"].get(code, 0) + count
        into["db_ms"] += row.db_ms
    out = [found[key] for key in sorted(found)]
    for entry in out:
        entry["db_ms"] = round(entry["db_ms"], 3)
    return out


def _print_table(entries: list[dict[str, Any]]) -> None:
    header = "TENANT OPERATION CALLS FAILED ITEMS_IN ITEMS_OUT BYTES_IN BYTES_OUT DB_MS"
    line = "{:<20}{:<18}{:>8}{:>8}{:>10}{:>10}{:>12}{:>12}{:>11}"
    click.echo(line.format(*header.split()))
    for e in entries:
        failed = sum(e["failures"].values())
        cells = (e["tenant"], e["operation"], e["calls"], failed)
        cells += tuple(e[k] for k in ("items_in", "items_out", "bytes_in", "bytes_out"))
        click.echo(line.format(*cells, f"{e['db_ms']:.1f}"))
        for code, count in sorted(e["failures"].items()):
            click.echo(f"{'':<38}{count:>8} {code}")


def register_usage(
    group: click.Group, target: Callable[[click.Context, str | None], str]
) -> None:
    """
    Add the ``usage`` command to ``group``.
    """

    @group.command("usage")
    @click.option(
        "--tenant",
        default="",
        help="This tenant (another than the token's needs an admin token; "
        "default: the token's tenant, every tenant for an admin token).",
    )
    @click.option(
        "--since",
        default="24h",
        show_default=True,
        help="Start of the range: a duration before now (24h, 7d) or an ISO time.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("-a", "--address", help="Server address (default: grpc.address).")
    @click.option("--token", envvar="LAKE_TOKEN", help="API token (or $LAKE_TOKEN).")
    @click.option(
        "-t", "--timeout", default=10.0, show_default=True, help="Deadline in seconds."
    )
    @tls_options
    @click.pass_context
    def usage(
        ctx: click.Context,
        tenant: str,
        since: str,
        as_json: bool,
        address: str | None,
        token: str | None,
        timeout: float,
    ) -> None:
        """
        Metered usage per tenant and operation since --since (summed): calls,
        failures by status code, items, message bytes and database time. Counts
        reach the server's table within usage.flush_interval of each call.
        """
        start = _since(since).astimezone(UTC)
        address = target(ctx, address)
        with client_for(address, token=token, timeout=timeout) as lake:
            rows = answer_or_exit(
                lake.channel,
                "usage",
                address,
                # Days: the fewest rows.
                lambda: lake.usage(tenant=tenant, since=start, granularity="day"),
            )
        entries = summed(rows)
        if as_json:
            click.echo(json.dumps(entries, indent=2))
        else:
            _print_table(entries)
