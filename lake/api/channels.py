"""
Client channels for the ``lake`` command: plaintext, or TLS that trusts one CA.

A command's TLS settings are the profile's ``client.tls`` (``LAKE_CLIENT__TLS__*``),
each overridden by its flag (``--ca``, ``--cert``, ``--key``, ``--server-name``);
with ``--ca`` the flags alone count, so no settings file is needed. Without a CA the
channel is plaintext.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import grpc

from lake.client import TLS, Client
from lake.config import load_settings
from lake.errors import ConfigError
from lake.tls import ClientTLS, channel_credentials, channel_options, client_tls_of

__all__ = [
    "client_channel",
    "client_for",
    "client_tls",
    "open_channel",
    "tls_options",
]

F = TypeVar("F", bound=Callable[..., Any])

_FLAGS = "tls_flags"  # where the flags wait in the click context object


def open_channel(target: str, tls: ClientTLS | None) -> grpc.Channel:
    """
    A channel to ``target``: TLS pinned to ``tls.ca_file`` when given, else
    plaintext.

    Raises:
        ConfigError: a TLS file is missing or unreadable.
    """
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(
        target, channel_credentials(tls), options=channel_options(tls)
    )


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(dict).setdefault(_FLAGS, {})[param.name] = value


_OPTIONS = [
    ("--ca", "ca_file", "CA file that signed the server's certificate (turns TLS on)"),
    ("--cert", "cert_file", "client certificate file, for mTLS"),
    ("--key", "key_file", "client key file, for mTLS"),
    ("--server-name", "server_name", "name in the server's certificate"),
]


def tls_options(fn: F) -> F:
    """
    Add the TLS flags to a command; ``client_tls`` reads them.
    """
    for flag, name, text in reversed(_OPTIONS):
        fn = click.option(
            flag,
            name,
            metavar="NAME" if name == "server_name" else "FILE",
            expose_value=False,
            callback=_remember,
            help=f"TLS: {text} (default: client.tls.{name}, "
            f"$LAKE_CLIENT__TLS__{name.upper()}).",
        )(fn)
    return fn


def client_tls(ctx: click.Context) -> ClientTLS | None:
    """
    The command's TLS settings (flags over the profile's ``client.tls``); None for
    plaintext.

    Raises:
        ConfigError: the settings are invalid.
    """
    obj: dict[str, Any] = ctx.ensure_object(dict)
    flags: dict[str, str] = obj.get(_FLAGS) or {}
    if "ca_file" in flags:
        return client_tls_of(flags)  # complete: works without a settings file
    settings = load_settings(obj.get("env"), files=obj.get("config"))
    values = {**settings["client"]["tls"], **flags}
    if flags and not values["ca_file"]:
        msg = "the TLS flags need --ca (the CA that signed the server's certificate)"
        raise ConfigError(msg)
    return client_tls_of(values)


def client_channel(target: str) -> grpc.Channel:
    """
    A channel to ``target`` with the current command's TLS settings.
    """
    try:
        return open_channel(target, client_tls(click.get_current_context()))
    except ConfigError as exc:
        msg = f"config error: {exc}"
        raise click.ClickException(msg) from None


def client_for(
    target: str, *, token: str | None, timeout: float, tls: bool = True
) -> Client:
    """
    A ``lake.client.Client`` to ``target`` for the current command: its token,
    deadline and (``tls``) TLS settings, the files checked as ``lake.tls`` checks
    them.
    """
    settings: ClientTLS | None = None
    if tls:
        try:
            settings = client_tls(click.get_current_context())
            if settings is not None:
                channel_credentials(settings)  # refuse bad files with lake.tls's words
        except ConfigError as exc:
            msg = f"config error: {exc}"
            raise click.ClickException(msg) from None
    pinned = (
        None
        if settings is None
        else TLS(
            settings.ca_file,
            settings.cert_file,
            settings.key_file,
            settings.server_name,
        )
    )
    return Client(target, token=token, tls=pinned, timeout=timeout)
