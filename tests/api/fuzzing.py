"""
A reflection-driven generator of lake.v1 requests: plausible values, with hostile ones
mixed in field by field, built from the generated descriptors alone.
"""

from __future__ import annotations

import random
import time
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

F = FieldDescriptor
NOW_S = int(time.time())

HOSTILE_FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    5e-324,
    -5e-324,
    1e-310,
    1e-40,  # subnormal as a float32 (vector values)
    1.4e-45,
    3.4028235e38,
    2.2250738585072014e-308,
    1e-300,
    1e308,
    -1e308,
    3.4e38,
    1e39,
    180.0000001,
    -90.0000001,
    90.0,
    -180.0,
]
HOSTILE_STRINGS = [
    "",
    " ",
    "a",
    "A",
    'x"; DROP TABLE t;--',
    "a\x00b",
    "\x00",
    "\u202eevil",
    "\u0430",  # Cyrillic a
    "e\u0301",
    "zero\u200bwidth",
    "a" * 63,
    "a" * 64,
    "a" * 257,
    "\U0001f600" * 70,
    "x" * 9000,
    "../../etc/passwd",
    "%s%n",
    "null",
    "NaN",
]
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT_TYPES = {F.TYPE_DOUBLE, F.TYPE_FLOAT}

# Plausible values by field name, so most calls get past the first check and reach
# the stores and the database.
PLAUSIBLE: dict[str, Any] = {
    "collection": lambda r: r.choice(["fz", "fz", "notes", "missing"]),
    "metric": lambda r: r.choice(["cpu", "mem"]),
    "dim": lambda r: r.choice([3, 16]),
    "k": lambda r: r.randint(1, 20),
    "limit": lambda r: r.randint(1, 50),
    "ef_search": lambda r: r.randint(1, 100),
    "lon": lambda r: r.uniform(-180, 180),
    "lat": lambda r: r.uniform(-90, 90),
    "west": lambda r: r.uniform(-180, 180),
    "east": lambda r: r.uniform(-180, 180),
    "south": lambda r: r.uniform(-90, 0),
    "north": lambda r: r.uniform(0, 90),
    "radius_m": lambda r: r.uniform(1, 100_000),
    "id": lambda r: r.choice("abcdefgh"),
    "ids": lambda r: r.choice("abcdefgh"),
    "text": lambda r: r.choice(["hello", "a long note about rivers", "x"]),
    "vector": lambda r: r.uniform(-1, 1),
    "values": lambda r: r.uniform(-100, 100),
    "timestamps_us": lambda r: (NOW_S - r.randint(60, 86_400 * 2)) * 1_000_000,
    "cursor": lambda r: "",
}


class Generator:
    """
    Seeded requests: each field is plausible, or hostile with probability ``hostile``.
    """

    def __init__(self, seed: int, *, hostile: float = 0.2) -> None:
        self.rng = random.Random(seed)
        self.hostile = hostile

    def message(
        self, descriptor: Descriptor, cls: type[Message], depth: int = 0
    ) -> Any:
        msg = cls()
        for field in descriptor.fields:
            if self.rng.random() < 0.08:
                continue  # leave unset
            try:
                self._fill(msg, field, depth)
            except (ValueError, TypeError, OverflowError):
                continue  # a value protobuf itself refuses to hold
        self._fixup(descriptor.name, msg)
        return msg

    def _fill(self, msg: Any, field: FieldDescriptor, depth: int) -> None:
        hostile = self.rng.random() < self.hostile
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, field.name)
            for key, value in self._map(hostile).items():
                target[key] = value
        elif field.is_repeated:
            target = getattr(msg, field.name)
            for _ in range(self._count(hostile)):
                if field.message_type is not None:
                    target.add().CopyFrom(self._sub(field, depth))
                else:
                    target.append(self.scalar(field, hostile))
        elif field.message_type is not None:
            getattr(msg, field.name).CopyFrom(self._sub(field, depth, hostile))
        else:
            setattr(msg, field.name, self.scalar(field, hostile))

    def _sub(self, field: FieldDescriptor, depth: int, hostile: bool = False) -> Any:
        kind: Any = field.message_type
        cls = message_factory.GetMessageClass(kind)
        name = kind.full_name
        if name == "google.protobuf.Struct":
            return self.struct(hostile)
        if name == "google.protobuf.Timestamp":
            return cls(**self._time(hostile, timestamp=True))
        if name == "google.protobuf.Duration":
            return cls(**self._time(hostile, timestamp=False))
        return self.message(kind, cls, depth + 1)

    def _count(self, hostile: bool) -> int:
        if hostile:
            return self.rng.choice([0, 0, 1, 17, 40, 300])
        return self.rng.choice([1, 1, 2, 3, 4])

    def _map(self, hostile: bool) -> dict[str, str]:
        if not hostile:
            return self.rng.choice([{}, {"host": "a"}, {"host": "b", "dc": "x"}])
        shape = self.rng.randrange(4)
        if shape == 0:  # the btree row PostgreSQL refused: 25 tags of 100 chars
            return {f"tag{i}": self.rng.randbytes(50).hex() for i in range(25)}
        if shape == 1:
            return {f"k{i}": "\U0001f600" * 64 for i in range(16)}
        n = self.rng.randint(1, 5)
        return {
            self.rng.choice(HOSTILE_STRINGS): self.rng.choice(HOSTILE_STRINGS)
            for _ in range(n)
        }

    def scalar(self, field: FieldDescriptor, hostile: bool) -> Any:
        plausible = PLAUSIBLE.get(field.name)
        if not hostile and plausible is not None:
            return plausible(self.rng)
        t = field.type
        if t in FLOAT_TYPES:
            return (
                self.rng.choice(HOSTILE_FLOATS)
                if hostile
                else self.rng.uniform(-1e3, 1e3)
            )
        if t in INT_RANGES:
            lo, hi = INT_RANGES[t]
            picks = [lo, hi, 0, 1, -1, 2**31, 2**53 + 1, self.rng.randint(lo, hi)]
            return min(max(self.rng.choice(picks), lo), hi)
        if t == F.TYPE_BOOL:
            return self.rng.random() < 0.5
        if t == F.TYPE_ENUM:
            enum: Any = field.enum_type
            numbers = [v.number for v in enum.values]
            return (
                self.rng.choice([*numbers, 99, -1])
                if hostile
                else self.rng.choice(numbers)
            )
        if t == F.TYPE_STRING:
            return self.rng.choice(HOSTILE_STRINGS)
        if t == F.TYPE_BYTES:
            return self.rng.randbytes(self.rng.randint(0, 64))
        msg = f"no generator for field type {t}"
        raise AssertionError(msg)

    def _time(self, hostile: bool, *, timestamp: bool) -> dict[str, int]:
        if hostile:
            seconds = self.rng.choice(
                [2**63 - 1, -(2**63), 253402300800, -62135596801, 0, -1, 10**12]
            )
            nanos = self.rng.choice([0, -1, 10**9, 2**31 - 1, -(2**31), 999_999_999])
            return {"seconds": seconds, "nanos": nanos}
        if timestamp:
            return {"seconds": NOW_S - self.rng.randint(0, 86_400 * 3), "nanos": 0}
        return {"seconds": self.rng.choice([60, 3600, 86_400, 1]), "nanos": 0}

    def struct(self, hostile: bool) -> struct_pb2.Struct:
        out = struct_pb2.Struct()
        if not hostile:
            out.update(
                {"kind": self.rng.choice(["x", "y"]), "n": self.rng.randint(0, 3)}
            )
            return out
        shape = self.rng.randrange(5)
        if shape == 0:  # non-finite numbers, at the top or nested
            value = self.rng.choice([float("nan"), float("inf"), float("-inf")])
            out.update(
                {"a": value} if self.rng.random() < 0.5 else {"a": {"b": [1, value]}}
            )
        elif shape == 1:  # deep nesting (past protobuf's recursion limit at times)
            inner: Any = 1
            for _ in range(self.rng.choice([9, 30, 60])):
                inner = {"d": inner} if self.rng.random() < 0.5 else [inner]
            out.update({"deep": inner})
        elif shape == 2:  # many keys
            out.update({f"k{i}": i for i in range(self.rng.choice([257, 600]))})
        elif shape == 3:  # hostile strings as keys and values
            out.update(
                {self.rng.choice(HOSTILE_STRINGS): self.rng.choice(HOSTILE_STRINGS)}
            )
        else:  # numbers at the edges
            out.update({"x": self.rng.choice([5e-324, 1e308, -0.0, 2.0**64])})
        return out

    def _fixup(self, name: str, msg: Any) -> None:
        # Keep paired fields paired most of the time, so the pairs reach the stores.
        if self.rng.random() < 0.2:
            return
        if name == "WritePointsRequest":
            n = len(msg.timestamps_us)
            del msg.values[n:]
            while len(msg.values) < n:
                msg.values.append(self.rng.uniform(-100, 100))
        elif name == "InPolygonRequest" and self.rng.random() < 0.7:
            lon, lat = self.rng.uniform(-10, 10), self.rng.uniform(-10, 10)
            ring = [(lon, lat), (lon + 1, lat), (lon + 1, lat + 1), (lon, lat)]
            del msg.lons[:], msg.lats[:]
            msg.lons.extend(x for x, _ in ring)
            msg.lats.extend(y for _, y in ring)
        elif name == "SearchVectorsRequest" and self.rng.random() < 0.7:
            del msg.vector[:]
            dim = 3 if msg.collection == "fz" else 16
            msg.vector.extend(self.rng.uniform(-1, 1) for _ in range(dim))
        elif name == "UpsertVectorsRequest":
            for item in msg.items:
                if self.rng.random() < 0.7:
                    del item.values[:]
                    item.values.extend(self.rng.uniform(-1, 1) for _ in range(3))

    def corrupt(self, body: bytes) -> bytes:
        """
        ``body`` damaged: truncated, flipped, or replaced by bytes protobuf refuses.
        """
        shape = self.rng.randrange(4)
        if shape == 0 or not body:
            return self.rng.choice(
                [b"\x0a\xff\xff\xff\xff\x0f", b"\xff", b"\x0a\x05ab", b"\x08\x80\x80"]
            )
        if shape == 1:
            return body[: self.rng.randrange(len(body))] + b"\x0a\xff"
        if shape == 2:
            damaged = bytearray(body)
            for _ in range(3):
                damaged[self.rng.randrange(len(damaged))] = self.rng.randrange(256)
            return bytes(damaged)
        return b"\x0f" + self.rng.randbytes(self.rng.randint(1, 40))
