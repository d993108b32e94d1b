"""
``lake quota``: set and show per-tenant quotas on a running server, through the
admin-only lake.v1.Quotas service (as ``lake token`` manages tokens).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lake.client import TenantQuotas
from lake.console import admin_call

__all__ = ["register_quotas"]

T = TypeVar("T")

# --flag -> quota name; 0 means unlimited.
_RATES = ("read_per_s", "write_per_s", "search_per_s", "text_per_s")
_CAPS = ("max_collections", "max_vectors", "max_features", "max_points_per_day")


def _number(value: float) -> str:
    return "unlimited" if value == 0 else f"{value:g}"


def _as_dict(info: TenantQuotas) -> dict[str, Any]:
    return {
        "tenant": info.tenant,
        "overrides": dict(sorted(info.overrides.items())),
        "effective": dict(sorted(info.effective.items())),
        "usage": dict(sorted(info.usage.items())),
    }


def _echo_tenant(row: dict[str, Any]) -> None:
    click.echo(f"tenant {row['tenant']}:")
    for name, value in row["effective"].items():
        mark = "" if name in row["overrides"] else "  (default)"
        click.echo(f"  {name:<20}{_number(value)}{mark}")
    for name, count in row["usage"].items():
        click.echo(f"  stored {name:<13}{count}")


def _options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("-a", "--address", help="Server address (grpc.address)."),
            click.option(
                "--token", envvar="LAKE_TOKEN", help="Admin API token (or $LAKE_TOKEN)."
            ),
            click.option(
                "-t", "--timeout", default=10.0, show_default=True, help="Deadline (s)."
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]
    ):
        fn = option(fn)
    return fn


def _quota_flags(fn: Any) -> Any:
    for name in reversed(_RATES + _CAPS):
        flag = "--" + name.replace("_", "-")
        kind = click.FloatRange(min=0) if name in _RATES else click.IntRange(min=0)
        fn = click.option(flag, name, type=kind, help=f"{name} (0: unlimited).")(fn)
    return fn


def register_quotas(
    group: click.Group, target: Callable[[click.Context, str | None], str]
) -> None:
    """
    Add the ``quota`` command group to ``group``.
    """

    @group.group()
    def quota() -> None:
        """
        Per-tenant quotas: request rates per operation class and storage caps, set
        and shown on a running server (admin token needed).
        """

    @quota.command("set")
    @click.option("--tenant", required=True, help="The tenant the quotas bind.")
    @click.option("--clear", is_flag=True, help="Drop its overrides first.")
    @_quota_flags
    @_options
    @click.pass_context
    def quota_set(
        ctx: click.Context,
        /,
        tenant: str,
        clear: bool,
        address: str | None,
        token: str | None,
        timeout: float,
        as_json: bool,
        **values: Any,
    ) -> None:
        """
        Set some of a tenant's quotas; every instance applies them within 5 s.
        """
        given = {k: float(v) for k, v in values.items() if v is not None}
        if not given and not clear:
            msg = "name at least one quota (or --clear)"
            raise click.UsageError(msg)
        reply = admin_call(
            "quota",
            target(ctx, address),
            token,
            timeout,
            lambda lake: lake.set_quotas(tenant, given, clear=clear),
        )
        row = _as_dict(reply)
        if as_json:
            click.echo(json.dumps(row))
            return
        _echo_tenant(row)

    @quota.command("show")
    @click.option("--tenant", default="", help="One tenant, with what it stores.")
    @_options
    @click.pass_context
    def quota_show(
        ctx: click.Context,
        tenant: str,
        address: str | None,
        token: str | None,
        timeout: float,
        as_json: bool,
    ) -> None:
        """
        Show the defaults and every tenant with overrides, or one tenant.
        """
        reply = admin_call(
            "quota",
            target(ctx, address),
            token,
            timeout,
            lambda lake: lake.show_quotas(tenant=tenant),
        )
        rows = [_as_dict(t) for t in reply.tenants]
        defaults = dict(sorted(reply.defaults.items()))
        if as_json:
            click.echo(json.dumps({"defaults": defaults, "tenants": rows}))
            return
        click.echo("defaults:")
        for name, value in defaults.items():
            click.echo(f"  {name:<20}{_number(value)}")
        for row in rows:
            _echo_tenant(row)
