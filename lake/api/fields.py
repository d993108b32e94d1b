"""
Field names as each request spells them.

The operations validate model objects (``VectorItem.vector``, ``Point.ts``, the
polygon ``ring``), so their ``ValidationError``s name model fields. A client can only
act on the names of its request message, so every error leaving an RPC is renamed
here, in one table per RPC, before it reaches the wire. The Python API keeps the
model names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lake.errors import ValidationError

__all__ = ["RENAMES", "request_field"]

Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> list[Rule]:
    return [(re.compile(f"^{pattern}$"), name) for pattern, name in pairs]


_POINTS = _rules(
    (r"points\[(\d+)\]\.ts", r"timestamps_us[\1]"),
    (r"points\[(\d+)\]\.value", r"values[\1]"),
    (r"points", "timestamps_us"),
)

# Keyed by the servicer method (``Class.Method``); the first matching rule wins and
# an unmatched name is the request's own already.
RENAMES: Mapping[str, Sequence[Rule]] = {
    "VectorsServicer.CreateCollection": _rules(
        (r"collection\.name", "collection"),
        (r"collection\.dim", "dim"),
        (r"collection\.metric", "metric"),
    ),
    "VectorsServicer.Upsert": _rules((r"items\[(\d+)\]\.vector", r"items[\1].values")),
    # The embedding's dimension against the collection's: the collection is the
    # request's only handle on it.
    "VectorsServicer.UpsertTexts": _rules((r"items\[(\d+)\]\.vector", "collection")),
    "VectorsServicer.SearchText": _rules((r"vector", "collection")),
    "TimeSeriesServicer.Write": _POINTS,
    # A stream's errors name the message first: messages[2].timestamps_us[7].
    "TimeSeriesServicer.WriteStream": _rules(
        (r"messages\[(\d+)\]\.points\[(\d+)\]\.ts", r"messages[\1].timestamps_us[\2]"),
        (r"messages\[(\d+)\]\.points\[(\d+)\]\.value", r"messages[\1].values[\2]"),
        (r"messages\[(\d+)\]\.points", r"messages[\1].timestamps_us"),
    ),
    "TimeSeriesServicer.Aggregate": _rules((r"fn", "aggregate")),
    "SpatialServicer.InPolygon": _rules(
        (r"ring\[(\d+)\]\.lon", r"lons[\1]"),
        (r"ring\[(\d+)\]\.lat", r"lats[\1]"),
        (r"ring\[(\d+)\]", r"lons[\1]"),
        (r"ring", "lons"),
    ),
}


def request_field(method: str, exc: ValidationError) -> ValidationError:
    """
    ``exc`` naming its field as ``method``'s request spells it.
    """
    for pattern, name in RENAMES.get(method, ()):
        if pattern.match(exc.field):
            return exc.renamed(pattern.sub(name, exc.field))
    return exc
