"""
Field checks shared by the operations: each raises ``ValidationError`` naming the
field it was given.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from lake.errors import ValidationError
from lake.models import Limits, Point

__all__ = [
    "check_batch",
    "check_bucket",
    "check_coordinate",
    "check_finite",
    "check_id",
    "check_json",
    "check_limit",
    "check_lon_lat",
    "check_name",
    "check_normal",
    "check_range",
    "check_ring",
    "check_tags",
    "check_tenant",
    "check_text",
    "check_timestamp",
    "check_unique_ids",
    "check_vector",
    "points_plainly_valid",
]

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,62}$")
_MAX_ID_CHARS = 256
_MAX_JSON_BYTES = 64 * 1024


def check_tenant(tenant: object) -> None:
    """
    A tenant id: lowercase ASCII letters, digits, ``_`` and ``-``; at most 63 chars.
    """
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ValidationError("tenant", "must match [a-z0-9][a-z0-9_-]{0,62}")


def check_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(where, "must match [a-z][a-z0-9_.]{0,62} (ASCII only)")


def check_id(value: object, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(where, "must be a non-empty string")
    if len(value) > _MAX_ID_CHARS:
        raise ValidationError(where, f"longer than {_MAX_ID_CHARS} characters")
    if "\x00" in value:
        raise ValidationError(where, "contains a NUL character")


def check_unique_ids(ids: Sequence[object], where: str) -> None:
    """
    Each ``where[i].id`` is a valid id, and no id appears twice in the batch.
    """
    seen: set[object] = set()
    for i, item_id in enumerate(ids):
        check_id(item_id, f"{where}[{i}].id")
        if item_id in seen:
            raise ValidationError(f"{where}[{i}].id", "appears twice in the batch")
        seen.add(item_id)


def check_json(value: object, where: str, limits: Limits) -> None:
    """
    A JSON object of finite numbers, without NUL, within the size, key and depth caps.
    """
    if not isinstance(value, Mapping):
        raise ValidationError(where, "must be a JSON object")
    keys = _json_keys(value, where, limits.max_json_depth)
    if keys > limits.max_json_keys:
        raise ValidationError(where, f"more than {limits.max_json_keys} keys")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationError(where, "must be JSON with finite numbers") from None
    if "\\u0000" in text:
        raise ValidationError(where, "contains a NUL character")
    if len(text) > _MAX_JSON_BYTES:
        raise ValidationError(where, f"larger than {_MAX_JSON_BYTES} bytes as JSON")


def _json_keys(value: object, where: str, depth: int) -> int:
    # Keys at every level; refuses nesting deeper than ``depth`` before json.dumps
    # would recurse through it.
    if not isinstance(value, Mapping | list | tuple):
        return 0
    if depth <= 0:
        raise ValidationError(where, "nests objects or lists too deeply")
    inner = value.values() if isinstance(value, Mapping) else value
    own = len(value) if isinstance(value, Mapping) else 0
    return own + sum(_json_keys(v, where, depth - 1) for v in inner)


def check_finite(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, "must be a number")
    if not math.isfinite(value):
        raise ValidationError(where, "must be finite (no NaN or infinity)")


def check_batch(items: Sequence[object], where: str, limits: Limits) -> None:
    if not items:
        raise ValidationError(where, "must not be empty")
    if len(items) > limits.max_batch:
        raise ValidationError(where, f"more than {limits.max_batch} items")


def check_vector(vector: object, where: str, limits: Limits) -> None:
    if isinstance(vector, str | bytes) or not isinstance(vector, Sequence):
        raise ValidationError(where, "must be a list of numbers")
    if not vector:
        raise ValidationError(where, "must not be empty")
    if len(vector) > limits.max_vector_dim:
        raise ValidationError(where, f"more than {limits.max_vector_dim} dimensions")
    for x in vector:
        check_finite(x, where)


def check_timestamp(ts: object, where: str) -> None:
    if not isinstance(ts, datetime):
        raise ValidationError(where, "must be a timestamp")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValidationError(where, "must carry a time zone (UTC)")


def check_lon_lat(
    lon: object,
    lat: object,
    where: str,
    *,
    lon_name: str = "lon",
    lat_name: str = "lat",
) -> None:
    check_coordinate(lon, f"{where}{lon_name}", 180.0)
    check_coordinate(lat, f"{where}{lat_name}", 90.0)


def check_coordinate(value: object, where: str, bound: float) -> None:
    """
    A finite, normal (or zero) number in ``[-bound, bound]``.
    """
    check_normal(value, where)
    assert isinstance(value, int | float)  # noqa: S101 -- narrowed by check_normal
    if not -bound <= value <= bound:
        raise ValidationError(where, f"must lie in [{-bound:g}, {bound:g}]")


def check_normal(value: object, where: str) -> None:
    """
    A finite number that is zero or normal: the database's trigonometry underflows
    on subnormal ones (5e-324) and refuses the statement.
    """
    check_finite(value, where)
    assert isinstance(value, int | float)  # noqa: S101 -- narrowed by check_finite
    if value != 0 and abs(value) < sys.float_info.min:
        raise ValidationError(where, "is too close to zero (subnormal): use 0")


def check_limit(value: object, where: str, cap: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, "must be an integer")
    if not 1 <= value <= cap:
        raise ValidationError(where, f"must lie in [1, {cap}]")


def points_plainly_valid(points: Sequence[Point]) -> bool:
    """
    The common batch in one pass: float values with a finite sum, datetimes in a
    fixed-offset zone. False sends the batch through the per-point checks, which
    name the first bad point (or pass a batch whose sum merely overflowed).
    """
    try:
        values = [p.value for p in points]
        if not all(type(v) is float for v in values):
            return False
        if not math.isfinite(sum(values)):
            return False
        return all(
            type(p.ts) is datetime and type(p.ts.tzinfo) is timezone for p in points
        )
    except AttributeError:
        return False


def check_range(start: object, end: object, limits: Limits) -> None:
    check_timestamp(start, "start")
    check_timestamp(end, "end")
    assert isinstance(start, datetime)  # noqa: S101 -- narrowed above
    assert isinstance(end, datetime)  # noqa: S101
    if start >= end:
        raise ValidationError("start", "must be before end")
    if end - start > limits.max_range:
        raise ValidationError("end", f"range longer than {limits.max_range.days} days")


def check_bucket(bucket: object, span: timedelta, limits: Limits) -> None:
    if not isinstance(bucket, timedelta) or bucket <= timedelta(0):
        raise ValidationError("bucket", "must be a positive duration")
    if span / bucket > limits.max_buckets:
        raise ValidationError("bucket", f"more than {limits.max_buckets} buckets")


def check_ring(ring: object, limits: Limits) -> None:
    if isinstance(ring, str | bytes) or not isinstance(ring, Sequence):
        raise ValidationError("ring", "must be a list of (lon, lat) pairs")
    if len(ring) < 4:
        raise ValidationError("ring", "needs at least 4 vertices (closed triangle)")
    if len(ring) > limits.max_polygon_vertices:
        raise ValidationError(
            "ring", f"more than {limits.max_polygon_vertices} vertices"
        )
    for i, vertex in enumerate(ring):
        if isinstance(vertex, str | bytes) or not isinstance(vertex, Sequence):
            raise ValidationError(f"ring[{i}]", "must be a (lon, lat) pair")
        if len(vertex) != 2:
            raise ValidationError(f"ring[{i}]", "must be a (lon, lat) pair")
        check_lon_lat(vertex[0], vertex[1], f"ring[{i}].")
    if tuple(ring[0]) != tuple(ring[-1]):
        raise ValidationError("ring", "must be closed: last vertex equals first")


def check_tags(tags: object, limits: Limits) -> None:
    """
    Tag names and short string values, within the count and size caps (a series'
    tags are one btree row, which PostgreSQL caps at ~2.7 kB).
    """
    if not isinstance(tags, Mapping):
        raise ValidationError("tags", "must be a mapping of names to strings")
    if len(tags) > limits.max_tags:
        raise ValidationError("tags", f"more than {limits.max_tags} tags")
    size = 0
    for key, value in tags.items():
        check_name(key, "tags")
        if not isinstance(value, str) or "\x00" in value or len(value) > _MAX_ID_CHARS:
            raise ValidationError(f"tags.{key}", "must be a short string without NUL")
        size += len(key) + len(value.encode("utf-8", "surrogatepass"))
    if size > limits.max_tags_bytes:
        msg = f"more than {limits.max_tags_bytes} bytes of names and values (UTF-8)"
        raise ValidationError("tags", msg)


def check_text(text: object, where: str, limits: Limits) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(where, "must be non-empty text")
    if len(text) > limits.max_text_chars:
        raise ValidationError(where, f"longer than {limits.max_text_chars} characters")
    if "\x00" in text:
        raise ValidationError(where, "contains a NUL character")
