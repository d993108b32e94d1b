"""
``lake token``: manage API tokens on a running server (create, list, revoke, through
the admin-only lake.v1.Tokens service), or make one offline for the settings (new).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

from lake.client import TokenInfo
from lake.console import admin_call
from lake.errors import LakeError

__all__ = ["register_tokens"]

T = TypeVar("T")

_SCOPES = ("read", "write", "admin")


def _when(stamp: datetime | None) -> str:
    return "-" if stamp is None else stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_dict(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "tenant": info.tenant,
        "scope": info.scope,
        "created_at": _when(info.created_at),
        "expires_at": _when(info.expires_at),
        "revoked_at": _when(info.revoked_at),
        "hash_prefix": info.hash_prefix,
        "note": info.note,
    }


_API_OPTIONS = [
    click.option("-a", "--address", help="Server address (default: grpc.address)."),
    click.option(
        "--token", envvar="LAKE_TOKEN", help="Admin API token (or $LAKE_TOKEN)."
    ),
    click.option(
        "-t", "--timeout", default=10.0, show_default=True, help="Deadline in seconds."
    ),
]


def _api_options(fn: Any) -> Any:
    for option in reversed(_API_OPTIONS):
        fn = option(fn)
    return fn


def register_tokens(
    group: click.Group, target: Callable[[click.Context, str | None], str]
) -> None:
    """
    Add the ``token`` command group to ``group``.
    """

    @group.group()
    def token() -> None:
        """
        API tokens: create, list and revoke them on a running server (admin token
        needed), or make one for the settings file (new).
        """

    @token.command("new")
    @click.option("--tenant", required=True, help="The tenant the token acts for.")
    def token_new(tenant: str) -> None:
        """
        Print a new random token and the settings line that grants it (offline).
        """
        from lake.tokens import hash_token, new_token
        from lake.validation import check_tenant

        try:
            check_tenant(tenant)
        except LakeError as exc:
            raise click.BadParameter(str(exc), param_hint="--tenant") from None
        value = new_token()
        click.echo(f"token: {value}")
        click.echo("add to [<profile>.auth.tokens] (or LAKE_AUTH__TOKENS):")
        click.echo(f'"{hash_token(value)}" = "{tenant}"')

    @token.command("create")
    @click.option("--tenant", required=True, help="The tenant the token acts for.")
    @click.option(
        "--scope", type=click.Choice(_SCOPES), default="write", show_default=True
    )
    @click.option("--expires", help="Lifetime such as 30d, 12h, 90m (default: none).")
    @click.option("--note", default="", help="A note shown by lake token list.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @_api_options
    @click.pass_context
    def token_create(
        ctx: click.Context,
        tenant: str,
        scope: str,
        expires: str | None,
        note: str,
        as_json: bool,
        address: str | None,
        token: str | None,
        timeout: float,
    ) -> None:
        """
        Create a token on the running server; it is printed once, never again.
        """
        from lake.tokens import parse_duration

        expires_in = None
        if expires:
            try:
                span = parse_duration(expires)
            except LakeError as exc:
                raise click.BadParameter(str(exc), param_hint="--expires") from None
            expires_in = timedelta(seconds=int(span.total_seconds()))
        reply = admin_call(
            "token",
            target(ctx, address),
            token,
            timeout,
            lambda lake: lake.create_token(
                tenant, scope, expires_in=expires_in, note=note
            ),
        )
        info = _as_dict(reply.info)
        if as_json:
            click.echo(json.dumps({"token": reply.token, **info}))
            return
        click.echo(f"token: {reply.token}")
        click.echo(
            f"id: {info['id']}  tenant: {info['tenant']}  scope: {info['scope']}"
            f"  expires: {info['expires_at']}"
        )
        click.echo("(shown once: Lake keeps only its hash)", err=True)

    @token.command("list")
    @click.option("--tenant", default="", help="Only this tenant's tokens.")
    @click.option("--all", "include_revoked", is_flag=True, help="Include revoked.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @_api_options
    @click.pass_context
    def token_list(
        ctx: click.Context,
        tenant: str,
        include_revoked: bool,
        as_json: bool,
        address: str | None,
        token: str | None,
        timeout: float,
    ) -> None:
        """
        List tokens (never the tokens themselves): id, tenant, scope, dates, note.
        """
        found = admin_call(
            "token",
            target(ctx, address),
            token,
            timeout,
            lambda lake: lake.list_tokens(
                tenant=tenant, include_revoked=include_revoked
            ),
        )
        rows = [_as_dict(i) for i in found]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        header = ("ID", "TENANT", "SCOPE", "CREATED", "EXPIRES", "REVOKED", "HASH")
        click.echo("{:<17}{:<20}{:<7}{:<22}{:<22}{:<22}{:<10}NOTE".format(*header))
        for r in rows:
            click.echo(
                f"{r['id']:<17}{r['tenant']:<20}{r['scope']:<7}{r['created_at']:<22}"
                f"{r['expires_at']:<22}{r['revoked_at']:<22}{r['hash_prefix']:<10}"
                f"{r['note']}"
            )

    @token.command("revoke")
    @click.argument("token_id")
    @_api_options
    @click.pass_context
    def token_revoke(
        ctx: click.Context,
        token_id: str,
        address: str | None,
        token: str | None,
        timeout: float,
    ) -> None:
        """
        Revoke a token by id; every instance refuses it within auth.refresh_s.
        """
        info = admin_call(
            "token",
            target(ctx, address),
            token,
            timeout,
            lambda lake: lake.revoke_token(token_id),
        )
        click.echo(f"revoked {info.id} (tenant {info.tenant})")
