"""
Metering at the gRPC layer: each call of a data method (``METERED``) is recorded
once in the ``Meter`` when it ends, with its tenant, operation, status code, items,
message sizes and the database time its transactions took.

The interceptor sits after authentication (the tenant is known) and before the
decode guard. It takes over its methods' (de)serialisation so the message sizes
are the lengths of the bytes grpc receives and sends, at no extra cost: the
request deserializer runs in the wrapper, and the response is serialised there
and handed to grpc as bytes. The manager's retries happen inside the call, so a
logical operation counts once. Calls refused before this point (admission,
authentication) are not metered; neither are health, reflection, tokens or usage.

Items count only on success: the items of the request that was written (vectors,
texts, points, features, ids to delete) and the rows a read returned (matches,
points, buckets, features).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from lake.api.auth import current_principal
from lake.api.wrapped import Layer
from lake.metering import OK, Meter, close_charge, open_charge

__all__ = ["METERED", "Metered", "MeteringInterceptor"]

if TYPE_CHECKING:
    _Context = grpc.aio.ServicerContext[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Context = grpc.aio.ServicerContext

Count = Callable[[Any], int]


def _none(_: Any) -> int:
    return 0


def _items(message: Any) -> int:
    return len(message.items)


def _points(message: Any) -> int:
    return len(message.timestamps_us)


def _matches(message: Any) -> int:
    return len(message.matches)


def _series_points(message: Any) -> int:
    return sum(len(s.timestamps_us) for s in message.series)


@dataclass(frozen=True, slots=True)
class Metered:
    """
    How one method is metered: the operation it bills as, and how many items its
    request carries in and its response carries out.
    """

    operation: str
    items_in: Count = _none
    items_out: Count = _none


def _methods(service: str, **methods: Metered) -> dict[str, Metered]:
    return {f"/lake.v1.{service}/{name}": m for name, m in methods.items()}


# The data methods, by the operation each one builds (lake.operations).
METERED: Mapping[str, Metered] = {
    **_methods(
        "Vectors",
        CreateCollection=Metered("CreateCollection"),
        Upsert=Metered("UpsertVectors", _items),
        Search=Metered("SearchVectors", items_out=_matches),
        Delete=Metered("DeleteVectors", lambda r: len(r.ids)),
        UpsertTexts=Metered("UpsertTexts", _items),
        SearchText=Metered("SearchText", items_out=_matches),
    ),
    **_methods(
        "TimeSeries",
        Write=Metered("WritePoints", _points),
        WriteStream=Metered("WritePointsMany", _points),
        Query=Metered("QueryPoints", items_out=_series_points),
        Aggregate=Metered("AggregatePoints", items_out=lambda r: len(r.buckets)),
    ),
    **_methods(
        "Spatial",
        Upsert=Metered("UpsertFeatures", lambda r: len(r.features)),
        Nearby=Metered("FeaturesNearby", items_out=_matches),
        Nearest=Metered("FeaturesNearest", items_out=_matches),
        InBox=Metered("FeaturesInBox", items_out=_matches),
        InPolygon=Metered("FeaturesInPolygon", items_out=_matches),
    ),
}


def _code(context: _Context, exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code: Any = context.code()  # None until set; grpc's stubs say otherwise
    if code is None or code == grpc.StatusCode.OK:
        return grpc.StatusCode.UNKNOWN.name
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _Counted:
    """
    Bytes and items of a request stream, counted as its messages are read.
    """

    __slots__ = ("bytes", "items")

    def __init__(self) -> None:
        self.bytes = 0
        self.items = 0


class MeteringInterceptor(Layer):
    """
    Records every call of a ``METERED`` method into ``meter`` once, when it ends.
    """

    def __init__(self, meter: Meter, *, enabled: bool = True) -> None:
        super().__init__()
        self._meter = meter
        self._enabled = enabled

    def wrap(self, handler: Any, method: str) -> Any:
        metered = METERED.get(method)
        if metered is None or not self._enabled:
            return handler
        return self._metered(handler, metered)

    def _metered(self, handler: Any, metered: Metered) -> Any:
        decode = handler.request_deserializer or (lambda b: b)
        encode = handler.response_serializer or (lambda m: m)
        changes: dict[str, Any] = {
            "request_deserializer": None,
            "response_serializer": None,
        }
        if handler.unary_unary is not None:
            changes["unary_unary"] = self._unary(
                handler.unary_unary, metered, decode, encode
            )
        elif handler.stream_unary is not None:
            changes["stream_unary"] = self._stream(
                handler.stream_unary, metered, decode, encode
            )
        else:
            return handler  # no response stream is metered
        return handler._replace(**changes)

    def _unary(
        self,
        behavior: Callable[[Any, _Context], Awaitable[Any]],
        metered: Metered,
        decode: Callable[[bytes], Any],
        encode: Callable[[Any], bytes],
    ) -> Callable[[bytes, _Context], Awaitable[bytes]]:
        meter = self._meter

        async def unary(raw: bytes, context: _Context) -> bytes:
            tenant = current_principal().tenant
            charge, token = open_charge()
            size_out = items_in = items_out = 0
            code = OK
            try:
                request = decode(raw)
                response = await behavior(request, context)
                out = encode(response)
                size_out = len(out)
                items_in = metered.items_in(request)
                items_out = metered.items_out(response)
            except BaseException as exc:
                code = _code(context, exc)
                raise
            finally:
                close_charge(token)
                meter.record(
                    tenant,
                    metered.operation,
                    code,
                    items_in=items_in,
                    items_out=items_out,
                    bytes_in=len(raw),
                    bytes_out=size_out,
                    db_s=charge.db_s,
                )
            return out

        return unary

    def _stream(
        self,
        behavior: Callable[[AsyncIterator[Any], _Context], Awaitable[Any]],
        metered: Metered,
        decode: Callable[[bytes], Any],
        encode: Callable[[Any], bytes],
    ) -> Callable[[AsyncIterator[bytes], _Context], Awaitable[bytes]]:
        meter = self._meter

        async def read(
            raws: AsyncIterator[bytes], counted: _Counted
        ) -> AsyncIterator[Any]:
            async for raw in raws:
                counted.bytes += len(raw)
                request = decode(raw)
                if isinstance(request, Message):  # not the decode guard's sentinel
                    counted.items += metered.items_in(request)
                yield request

        async def stream(raws: AsyncIterator[bytes], context: _Context) -> bytes:
            tenant = current_principal().tenant
            charge, token = open_charge()
            counted = _Counted()
            size_out = items_out = 0
            code = OK
            try:
                response = await behavior(read(raws, counted), context)
                out = encode(response)
                size_out = len(out)
                items_out = metered.items_out(response)
            except BaseException as exc:
                code = _code(context, exc)
                raise
            finally:
                close_charge(token)
                meter.record(
                    tenant,
                    metered.operation,
                    code,
                    items_in=counted.items if code == OK else 0,
                    items_out=items_out,
                    bytes_in=counted.bytes,
                    bytes_out=size_out,
                    db_s=charge.db_s,
                )
            return out

        return stream
