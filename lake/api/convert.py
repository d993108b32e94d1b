"""
Wire messages to operations and results to wire messages.

Conversion errors are ``ValidationError``s naming the request field, so they map to
INVALID_ARGUMENT like every other bad input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from lake.errors import ValidationError
from lake.models import Bucket, Feature, FeatureMatch, PointPage, VectorMatch
from lake.v1 import lake_pb2

__all__ = [
    "AGGREGATES",
    "METRICS",
    "buckets_out",
    "features_out",
    "from_struct",
    "matches_out",
    "page_out",
    "required_duration",
    "required_time",
    "to_struct",
    "us_to_datetimes",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
METRICS = {
    lake_pb2.METRIC_COSINE: "cosine",
    lake_pb2.METRIC_L2: "l2",
    lake_pb2.METRIC_INNER_PRODUCT: "ip",
}
METRIC_ENUM = {v: k for k, v in METRICS.items()}
AGGREGATES = {
    lake_pb2.AGGREGATE_AVG: "avg",
    lake_pb2.AGGREGATE_MIN: "min",
    lake_pb2.AGGREGATE_MAX: "max",
    lake_pb2.AGGREGATE_SUM: "sum",
    lake_pb2.AGGREGATE_COUNT: "count",
    lake_pb2.AGGREGATE_LAST: "last",
}


def from_struct(value: struct_pb2.Struct) -> dict[str, Any]:
    """
    A Struct as a plain dict (numbers come back as floats, as JSON has them).

    Written out rather than ``json_format.MessageToDict``, which raises on NaN and
    infinity: here they pass through, and the operation's check names the field.
    """
    return {key: _plain(item) for key, item in value.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """
    A plain dict as a Struct.
    """
    out = struct_pb2.Struct()
    if value:  # Struct.update: far cheaper than json_format.ParseDict
        out.update(value)
    return out


def required_time(message: Any, field: str) -> datetime:
    """
    A Timestamp field as an aware datetime; unset is a validation error.
    """
    if not message.HasField(field):
        raise ValidationError(field, "is required")
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ValidationError(field, "is out of range") from None


def required_duration(message: Any, field: str) -> timedelta:
    """
    A Duration field as a timedelta; unset or beyond timedelta's range is a
    validation error.
    """
    if not message.HasField(field):
        raise ValidationError(field, "is required")
    duration: duration_pb2.Duration = getattr(message, field)
    try:
        return duration.ToTimedelta()
    except (ValueError, OverflowError):
        raise ValidationError(field, "is out of range") from None


def us_to_datetimes(values: Sequence[int], field: str) -> list[datetime]:
    """
    Microseconds since the epoch as aware datetimes.
    """
    out = []
    for i, us in enumerate(values):
        try:
            out.append(EPOCH + timedelta(microseconds=us))
        except OverflowError:
            raise ValidationError(f"{field}[{i}]", "is out of range") from None
    return out


def _us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def _stamp(ts: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(ts)
    return out


def matches_out(matches: Sequence[VectorMatch]) -> lake_pb2.SearchVectorsResponse:
    """
    Search results on the wire.
    """
    out = lake_pb2.SearchVectorsResponse()
    for m in matches:
        match = out.matches.add()
        match.id = m.id
        match.distance = m.distance
        if m.metadata:
            match.metadata.update(m.metadata)
        else:
            match.metadata.SetInParent()
    return out


def page_out(page: PointPage) -> lake_pb2.QueryPointsResponse:
    """
    A page of points on the wire, one packed block per series.
    """
    series: dict[tuple[tuple[str, str], ...], lake_pb2.SeriesPoints] = {}
    for p in page.points:
        key = tuple(sorted(p.tags.items()))
        block = series.get(key)
        if block is None:
            block = series[key] = lake_pb2.SeriesPoints(tags=dict(p.tags))
        block.timestamps_us.append(_us(p.ts))
        block.values.append(p.value)
    return lake_pb2.QueryPointsResponse(
        series=list(series.values()), next_cursor=page.next_cursor or ""
    )


def buckets_out(buckets: Sequence[Bucket]) -> lake_pb2.AggregatePointsResponse:
    """
    Aggregation buckets on the wire.
    """
    return lake_pb2.AggregatePointsResponse(
        buckets=[
            lake_pb2.Bucket(start=_stamp(b.start), value=b.value, count=b.count)
            for b in buckets
        ]
    )


def feature_in(message: lake_pb2.Feature) -> Feature:
    """
    A wire feature as a model feature.
    """
    return Feature(
        id=message.id,
        lon=message.lon,
        lat=message.lat,
        properties=from_struct(message.properties),
    )


def features_out(matches: Sequence[FeatureMatch]) -> lake_pb2.FeaturesResponse:
    """
    Spatial results on the wire.
    """
    out = lake_pb2.FeaturesResponse()
    for m in matches:
        match = out.matches.add()
        match.distance_m = m.distance_m
        feature = match.feature
        feature.id = m.feature.id
        feature.lon = m.feature.lon
        feature.lat = m.feature.lat
        if m.feature.properties:
            feature.properties.update(m.feature.properties)
        else:
            feature.properties.SetInParent()  # present and empty, as before
    return out
