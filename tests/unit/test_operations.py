"""
Operation validation: every bad input names its field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lake.errors import ValidationError
from lake.operations import (
    AggregatePoints,
    Collection,
    CreateCollection,
    DeleteVectors,
    Feature,
    FeaturesInBox,
    FeaturesInPolygon,
    FeaturesNearby,
    FeaturesNearest,
    Limits,
    Point,
    QueryPoints,
    SearchVectors,
    UpsertFeatures,
    UpsertVectors,
    VectorItem,
    WritePoints,
)

LIMITS = Limits(max_vector_dim=8, max_batch=3, max_top_k=10, max_range_points=100)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        (SearchVectors("A", "docs", [1.0]), "tenant"),
        (SearchVectors("", "docs", [1.0]), "tenant"),
        (SearchVectors("t" * 64, "docs", [1.0]), "tenant"),
        (SearchVectors("t1", 'x"; DROP TABLE t;--', [1.0]), "collection"),
        (SearchVectors("t1", "d\u043e\u0441s", [1.0]), "collection"),  # Cyrillic o, s
        (SearchVectors("t1", "docs", []), "vector"),
        (SearchVectors("t1", "docs", [1.0] * 9), "vector"),
        (SearchVectors("t1", "docs", [NAN]), "vector"),
        (SearchVectors("t1", "docs", [INF]), "vector"),
        (SearchVectors("t1", "docs", [1.0], k=0), "k"),
        (SearchVectors("t1", "docs", [1.0], k=11), "k"),
        (UpsertVectors("t1", "docs", []), "items"),
        (
            UpsertVectors("t1", "docs", [VectorItem(str(i), [1.0]) for i in range(4)]),
            "items",
        ),
        (UpsertVectors("t1", "docs", [VectorItem("", [1.0])]), "items[0].id"),
        (UpsertVectors("t1", "docs", [VectorItem("a\x00b", [1.0])]), "items[0].id"),
        (
            UpsertVectors(
                "t1", "docs", [VectorItem("a", [1.0]), VectorItem("a", [2.0])]
            ),
            "items[1].id",
        ),
        (
            UpsertVectors(
                "t1", "docs", [VectorItem("a", [1.0]), VectorItem("b", [1.0, 2])]
            ),
            "items[1].vector",
        ),
        (
            UpsertVectors("t1", "docs", [VectorItem("a", [1.0], {"x": NAN})]),
            "items[0].metadata",
        ),
        (WritePoints("t1", "cpu", [Point(datetime(2026, 1, 1), 1.0)]), "points[0].ts"),
        (WritePoints("t1", "cpu", [Point(T0, NAN)]), "points[0].value"),
        (WritePoints("t1", "cpu", [Point(T0, 1.0)], tags={"Bad Key": "x"}), "tags"),
        (QueryPoints("t1", "cpu", T0, T0), "start"),
        (QueryPoints("t1", "cpu", T0, T0 + timedelta(1), limit=101), "limit"),
        (UpsertFeatures("t1", [Feature("a", 181.0, 0.0)]), "features[0].lon"),
        (UpsertFeatures("t1", [Feature("a", 0.0, -91.0)]), "features[0].lat"),
        (UpsertFeatures("t1", [Feature("a", NAN, 0.0)]), "features[0].lon"),
        (FeaturesNearby("t1", 0.0, 0.0, 0.0), "radius_m"),
        (FeaturesNearby("t1", 0.0, 0.0, -5.0), "radius_m"),
        (FeaturesNearby("t1", 0.0, 95.0, 10.0), "lat"),
        (CreateCollection("t1", Collection("Docs", 3)), "collection.name"),
        (CreateCollection("t1", Collection("docs", 0)), "collection.dim"),
        (CreateCollection("t1", Collection("docs", 9)), "collection.dim"),
        (CreateCollection("t1", Collection("docs", 3, "hamming")), "collection.metric"),
        (DeleteVectors("t1", "docs", []), "ids"),
        (DeleteVectors("t1", "docs", ["a", ""]), "ids[1]"),
        (SearchVectors("t1", "docs", [1.0], where={"x": NAN}), "where"),
        (SearchVectors("t1", "docs", [1.0], ef_search=0), "ef_search"),
        (QueryPoints("t1", "cpu", T0, T0 + timedelta(days=367)), "end"),
        (AggregatePoints("t1", "cpu", T0, T0 + timedelta(1), timedelta(0)), "bucket"),
        (
            AggregatePoints("t1", "cpu", T0, T0 + timedelta(1), timedelta(1), "p99"),
            "fn",
        ),
        (
            AggregatePoints(
                "t1", "cpu", T0, T0 + timedelta(days=300), timedelta(minutes=1)
            ),
            "bucket",
        ),
        (FeaturesNearest("t1", 0.0, 0.0, k=11), "k"),
        (FeaturesInBox("t1", -181.0, 0.0, 1.0, 1.0), "west"),
        (FeaturesInBox("t1", 0.0, 5.0, 1.0, 1.0), "south"),
        (FeaturesInPolygon("t1", "POLYGON((0 0))"), "ring"),  # type: ignore[arg-type]
        (FeaturesInPolygon("t1", [(0, 0), (1, 0), (1, 1)]), "ring"),
        (FeaturesInPolygon("t1", [(0, 0), (1, 0), (1, 1), (0, 0.5)]), "ring"),
        (FeaturesInPolygon("t1", [(0, 0), (1, 0, 2), (1, 1), (0, 0)]), "ring[1]"),  # type: ignore[list-item]
        (FeaturesInPolygon("t1", [(0, 0), (1, NAN), (1, 1), (0, 0)]), "ring[1].lat"),
    ],
)
def test_bad_input_names_the_field(operation, field):
    """Each bad input raises ValidationError with the offending field."""
    with pytest.raises(ValidationError) as info:
        operation.validate(LIMITS)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "operation",
    [
        SearchVectors("t1", "docs", [1.0, 2.0], k=10),
        UpsertVectors(
            "tenant-1", "docs.v2", [VectorItem("a", [1, 2.5], {"k": [1, "x"]})]
        ),
        WritePoints("t_1", "cpu.load", [Point(T0, 0.5)], tags={"host": "a"}),
        QueryPoints("t1", "cpu", T0, T0 + timedelta(hours=1), limit=100),
        UpsertFeatures("t1", [Feature("a", -180.0, 90.0, {"name": "pole"})]),
        FeaturesNearby("t1", 2.35, 48.85, 1000.0, limit=10),
        CreateCollection("t1", Collection("docs", 8, "ip")),
        DeleteVectors("t1", "docs", ["a", "b"]),
        AggregatePoints("t1", "cpu", T0, T0 + timedelta(hours=1), timedelta(minutes=5)),
        FeaturesNearest("t1", 0.0, 0.0, k=10),
        FeaturesInBox("t1", 170.0, -10.0, -170.0, 10.0, limit=100),
        FeaturesInPolygon("t1", [(0, 0), (1, 0), (1, 1), (0, 0)], limit=100),
    ],
)
def test_good_input_passes(operation):
    """Well-formed operations validate without error."""
    operation.validate(LIMITS)
