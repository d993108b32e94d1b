"""
hypothesis strategies for lake.v1 requests, built from the generated descriptors.

Each field is plausible (so examples get past the first check) or arbitrary: any
float (NaN, infinities, subnormals), any integer the wire type holds, any text,
unknown enum numbers, Structs holding non-finite numbers, Timestamps and Durations
far outside any calendar.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

from lake.v1 import lake_pb2

__all__ = ["lake_methods", "requests_for"]

F = FieldDescriptor
NOW_US = int(time.time()) * 1_000_000
INT64 = (-(2**63), 2**63 - 1)
INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: INT64,
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
}
NOW_S = NOW_US // 1_000_000
NAMES = st.sampled_from(
    ["docs", "docs", "cpu", "cpu", "x", "Bad", "a" * 64, "", "a\x00b", "\u0430"]
)
IDS = st.sampled_from(["a", "b", "c", "a", "", "x" * 300, "a\x00"])
# Values by field name that get an example past the first check.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "collection": NAMES,
    "metric": NAMES,
    "id": IDS,
    "ids": IDS,
    "text": st.sampled_from(["hello", "abc", " ", "x" * 9000]),
    "timestamps_us": st.integers(NOW_US - 86_400_000_000, NOW_US),
    "dim": st.integers(0, 3000),
    "k": st.integers(0, 2000),
    "limit": st.integers(0, 200_000),
    "lon": st.floats(-180, 180),
    "lat": st.floats(-90, 90),
    "lons": st.floats(-180, 180),
    "lats": st.floats(-90, 90),
    "radius_m": st.floats(0, 1e6),
}


def _json() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.floats() | st.text(max_size=8)
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=12,
    )


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(value: dict[str, Any]) -> struct_pb2.Struct:
        out = struct_pb2.Struct()
        out.update(value)
        return out

    return st.dictionaries(st.text(max_size=6), _json(), max_size=4).map(build)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_DOUBLE:
        return st.floats()
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type in INTS:
        lo, hi = INTS[field.type]
        return st.integers(lo, hi)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_ENUM:
        enum: Any = field.enum_type
        known = [v.number for v in enum.values if v.number]
        return st.sampled_from(known) | st.sampled_from(known) | st.integers(-3, 12)
    if field.type == F.TYPE_STRING:
        return st.text(max_size=40)
    msg = f"no strategy for field type {field.type}"
    raise AssertionError(msg)


def _value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind: Any = field.message_type
    if kind is None:
        arbitrary = _scalar(field)
        plausible = PLAUSIBLE.get(field.name)
        if plausible is None or field.type == F.TYPE_ENUM:
            return arbitrary
        return plausible | plausible | arbitrary
    cls = message_factory.GetMessageClass(kind)
    if kind.full_name == "google.protobuf.Struct":
        return _struct()
    if kind.full_name == "google.protobuf.Timestamp":
        seconds = st.integers(NOW_S - 86_400, NOW_S) | st.integers(*INT64)
        nanos = st.just(0) | st.integers(-(2**31), 2**31 - 1)
        return st.builds(cls, seconds=seconds, nanos=nanos)
    if kind.full_name == "google.protobuf.Duration":
        seconds = st.sampled_from([1, 60, 3600]) | st.integers(*INT64)
        nanos = st.just(0) | st.integers(-(2**31), 2**31 - 1)
        return st.builds(cls, seconds=seconds, nanos=nanos)
    return message(kind)


def _field(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind: Any = field.message_type
    if kind is not None and kind.GetOptions().map_entry:
        return st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=20)
    if field.is_repeated:
        return st.lists(_value(field), max_size=5)
    return _value(field)


def message(descriptor: Descriptor) -> st.SearchStrategy[Any]:
    """
    Messages of ``descriptor``'s type, any subset of their fields set (paired
    fields, such as timestamps_us and values, paired more often than not).
    """
    cls = message_factory.GetMessageClass(descriptor)
    fields = {f.name: _field(f) for f in descriptor.fields}
    required = {k: v for k, v in fields.items() if k in USUALLY_SET}
    optional = {k: v for k, v in fields.items() if k not in USUALLY_SET}
    pairs = PAIRS.get(descriptor.name)

    def build(drawn: tuple[dict[str, Any], bool]) -> Any:
        values, pair = drawn
        if pair and pairs is not None:
            values = _paired(values, *pairs)
        out = cls()
        for name, value in values.items():
            target = getattr(out, name)
            if isinstance(value, dict):
                target.update(value)
            elif isinstance(value, list):
                target.extend(value)
            elif hasattr(value, "DESCRIPTOR"):
                target.CopyFrom(value)
            else:
                setattr(out, name, value)
        return out

    drawn = st.fixed_dictionaries(required, optional=optional)
    return st.tuples(drawn, st.booleans()).map(build)


# Fields without which a request fails its first check: always set (to plausible or
# arbitrary values), so examples reach the later checks and the stores.
USUALLY_SET = {
    "collection",
    "metric",
    "start",
    "end",
    "bucket",
    "aggregate",
    "items",
    "features",
    "vector",
    "values",
    "text",
    "timestamps_us",
    "ids",
    "id",
}


# Repeated fields that must be as long as another: (leader, follower).
PAIRS = {
    "WritePointsRequest": ("timestamps_us", "values"),
    "InPolygonRequest": ("lons", "lats"),
}


def _paired(values: dict[str, Any], leader: str, follower: str) -> dict[str, Any]:
    lead = values.get(leader) or ([0.0, 1.0, 1.0] if leader == "lons" else [NOW_US])
    follow = [*values.get(follower, []), *([0.0] * len(lead))][: len(lead)]
    if leader == "lons":  # close the ring
        lead, follow = [*lead, lead[0]], [*follow, follow[0]]
    return {**values, leader: lead, follower: follow}


def lake_methods() -> list[MethodDescriptor]:
    """
    Every method of every lake.v1 service.
    """
    return [m for s in lake_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods]


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[Any]:
    """
    A request for ``method``: one message, or a short list for a request stream.
    """
    one = message(method.input_type)
    return st.lists(one, min_size=1, max_size=3) if method.client_streaming else one
