"""
What the shell commands share: one exit-code rule for a call (0 ok, 1 refused, 2 no
server), the table of unary methods on Lake's port, reply printing, and the points
CSV reader that checks a whole file before anything is sent.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click
import grpc

from lake.api.channels import client_for
from lake.client import Client, status_details, status_name
from lake.errors import LakeError

__all__ = [
    "EXIT_NO_SERVER",
    "EXIT_REFUSED",
    "CsvError",
    "admin_call",
    "answer_or_exit",
    "integral",
    "read_points",
    "unary_methods",
]

T = TypeVar("T")

# A failed call ends the command: 1 when a server answered and refused it, 2 when no
# server answered (the same codes for health, status, call and points write).
EXIT_REFUSED = 1
EXIT_NO_SERVER = 2
_NO_ANSWER = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _connected(channel: grpc.Channel, wait: float = 0.2) -> bool:
    """
    Whether ``channel`` is connected to a server (a READY HTTP/2 connection).
    """
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=wait)
    except grpc.FutureTimeoutError:
        ready.cancel()
        return False
    return True


def admin_call(
    command: str,
    target: str,
    token: str | None,
    timeout: float,
    send: Callable[[Client], T],
) -> T:
    """
    ``send`` on a plaintext client of ``target`` (the admin commands ``lake token``
    and ``lake quota``); a refusal prints one line naming ``command`` and exits 1.
    """
    with client_for(target, token=token, timeout=timeout, tls=False) as lake:
        try:
            return send(lake)
        except LakeError as exc:
            if status_name(exc):
                click.echo(
                    f"lake {command}: {status_name(exc)}: {status_details(exc)}",
                    err=True,
                )
            else:
                click.echo(f"lake {command}: call failed", err=True)
            sys.exit(EXIT_REFUSED)


def answer_or_exit(
    channel: grpc.Channel, command: str, target: str, send: Callable[[], T]
) -> T:
    """
    Return what ``send`` (a call on ``channel``, raw or through ``lake.client``)
    returns; when it fails, print one line and exit 1 if a server answered with an
    error, 2 if none answered.

    UNAVAILABLE and DEADLINE_EXCEEDED count as "no answer" only when the channel has
    no connection: a connected server that answers UNAVAILABLE refused the call.
    """
    try:
        return send()
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details()  # a stub's are grpc.Call
    except LakeError as exc:
        if not status_name(exc):
            raise  # not a status: refused before sending
        code, details = status_name(exc), status_details(exc)
    if code in _NO_ANSWER and not _connected(channel):
        click.echo(f"lake {command}: no answer from {target} ({code})", err=True)
        sys.exit(EXIT_NO_SERVER)
    click.echo(f"lake {command}: {code}: {details}", err=True)
    sys.exit(EXIT_REFUSED)


_EXACT = 2.0**53  # above this a double no longer counts one by one


def integral(value: Any) -> Any:
    """
    ``value`` with every whole float made an int: protobuf's Struct holds every
    number as a double, so counters would print as 3.0.
    """
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT:
        return int(value)
    return value


def unary_methods() -> dict[str, Any]:
    """
    Every unary method served on Lake's port, by ``Service.Method`` and by
    ``package.Service.Method``: lake.v1's services, LakeHealth, grpc.health.v1.
    """
    from grpc_health.v1 import health_pb2 as std_health_pb2

    from lake.v1 import health_pb2 as lake_health_pb2
    from lake.v1 import lake_pb2

    found: dict[str, Any] = {}
    for module in (lake_pb2, lake_health_pb2, std_health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for rpc in service.methods:
                if rpc.client_streaming or rpc.server_streaming:
                    continue
                found[f"{service.full_name}.{rpc.name}"] = rpc
                found.setdefault(f"{service.name}.{rpc.name}", rpc)
    return found


class CsvError(ValueError):
    """
    A row of a points CSV that breaks the rules; ``str()`` is ``file:line:col: why``.
    """


_EPOCH = re.compile(r"^\d+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MIN_US = (datetime.min.replace(tzinfo=UTC) - datetime.fromtimestamp(0, UTC)) // (
    timedelta(microseconds=1)
)
_MAX_US = (datetime.max.replace(tzinfo=UTC) - datetime.fromtimestamp(0, UTC)) // (
    timedelta(microseconds=1)
)


def _timestamp_us(text: str) -> int:
    if _EPOCH.fullmatch(text):
        micros = int(Decimal(text) * 1_000_000)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            msg = f"timestamp {text!r} is neither ISO 8601 nor epoch seconds"
            raise ValueError(msg) from None
        if when.tzinfo is None:
            msg = f"timestamp {text!r} has no time zone (add Z or +00:00)"
            raise ValueError(msg)
        micros = (when - datetime.fromtimestamp(0, UTC)) // timedelta(microseconds=1)
    if not _MIN_US <= micros <= _MAX_US:
        msg = f"timestamp {text!r} is out of range"
        raise ValueError(msg)
    return micros


def _value(text: str) -> float:
    if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
        msg = f"value {text!r} is not a finite number"
        raise ValueError(msg)
    return float(text)


def read_points(lines: Iterable[str], name: str) -> tuple[list[int], list[float]]:
    """
    Parse a points CSV whole: ``timestamp,value`` rows (rules in the README).

    Returns:
        The timestamps (microseconds since the epoch, UTC) and the values.

    Raises:
        CsvError: the first bad row, as ``name:line:column: problem``.
    """
    stamps: list[int] = []
    values: list[float] = []
    reader = csv.reader(lines)
    first = True
    for row in reader:
        fields = [f.strip() for f in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        line = reader.line_num
        if first and len(fields) == 2 and _is_header(fields):
            first = False
            continue
        first = False
        if len(fields) != 2:
            column = min(len(fields), 2) + 1
            msg = f"{name}:{line}:{column}: expected 2 fields (timestamp,value)"
            raise CsvError(msg)
        column = 1
        try:
            stamp = _timestamp_us(fields[0])
            column = 2
            value = _value(fields[1])
        except ValueError as exc:
            msg = f"{name}:{line}:{column}: {exc}"
            raise CsvError(msg) from None
        stamps.append(stamp)
        values.append(value)
    if not stamps:
        msg = f"{name}:1:1: no points"
        raise CsvError(msg)
    return stamps, values


def _is_header(fields: list[str]) -> bool:
    """
    A first row is a header when its fields are neither a timestamp nor a number.
    """
    for parse, text in ((_timestamp_us, fields[0]), (_value, fields[1])):
        try:
            parse(text)
        except ValueError:
            continue
        return False
    return True
