"""
The spatial store on real PostgreSQL (cube + earthdistance, GiST indexes).
"""

from __future__ import annotations

import pytest

from lake.errors import ValidationError
from lake.operations import (
    Feature,
    FeaturesInBox,
    FeaturesInPolygon,
    FeaturesNearby,
    FeaturesNearest,
    UpsertFeatures,
)

PARIS = (2.3522, 48.8566)
VERSAILLES = (2.1301, 48.8049)
LONDON = (-0.1276, 51.5072)
BERLIN = (13.4050, 52.5200)
FIJI_WEST = (179.5, -17.0)
FIJI_EAST = (-179.5, -17.0)


@pytest.fixture
async def cities(manager):
    features = [
        Feature("paris", *PARIS, {"name": "Paris"}),
        Feature("versailles", *VERSAILLES),
        Feature("london", *LONDON),
        Feature("berlin", *BERLIN),
        Feature("fiji-w", *FIJI_WEST),
        Feature("fiji-e", *FIJI_EAST),
    ]
    assert await manager.coordinate(UpsertFeatures("t1", features)) == 6
    return manager


async def test_within_radius_in_metres_nearest_first(cities):
    """Radius search finds features inside the radius, ordered by true distance."""
    near = await cities.coordinate(FeaturesNearby("t1", *PARIS, radius_m=50_000.0))
    assert [m.feature.id for m in near] == ["paris", "versailles"]
    assert near[0].distance_m == pytest.approx(0.0, abs=1.0)
    assert near[1].distance_m == pytest.approx(17_200, rel=0.05)
    assert near[0].feature.properties == {"name": "Paris"}
    far = await cities.coordinate(FeaturesNearby("t1", *PARIS, radius_m=400_000.0))
    assert [m.feature.id for m in far] == ["paris", "versailles", "london"]
    assert far[2].distance_m == pytest.approx(343_500, rel=0.02)


async def test_nearest_k(cities):
    """Nearest-k orders by distance without a radius."""
    found = await cities.coordinate(FeaturesNearest("t1", *LONDON, k=3))
    assert [m.feature.id for m in found] == ["london", "versailles", "paris"]
    assert found[2].distance_m == pytest.approx(343_500, rel=0.02)
    assert found[1].distance_m < found[2].distance_m


async def test_nearest_crosses_the_antimeridian(cities):
    """Distances are on the sphere: the nearest neighbour across 180 degrees wins."""
    found = await cities.coordinate(FeaturesNearest("t1", *FIJI_WEST, k=2))
    assert [m.feature.id for m in found] == ["fiji-w", "fiji-e"]
    assert found[1].distance_m == pytest.approx(106_000, rel=0.05)


async def test_bounding_box(cities):
    """A box returns what lies inside it, by id; a wrapping box spans 180 degrees."""
    box = await cities.coordinate(FeaturesInBox("t1", 0.0, 45.0, 15.0, 55.0))
    assert [m.feature.id for m in box] == ["berlin", "paris", "versailles"]
    wrap = await cities.coordinate(FeaturesInBox("t1", 179.0, -20.0, -179.0, -10.0))
    assert [m.feature.id for m in wrap] == ["fiji-e", "fiji-w"]


async def test_polygon_containment(cities):
    """A triangle around Paris and Versailles contains those two only."""
    ring = [(1.5, 48.0), (3.5, 48.0), (2.5, 49.5), (1.5, 48.0)]
    inside = await cities.coordinate(FeaturesInPolygon("t1", ring))
    assert [m.feature.id for m in inside] == ["paris", "versailles"]


async def test_upsert_replaces_by_id(cities):
    """Moving a feature by id moves it; it is stored once."""
    await cities.coordinate(UpsertFeatures("t1", [Feature("paris", *BERLIN, {"v": 2})]))
    found = await cities.coordinate(FeaturesNearby("t1", *BERLIN, radius_m=1000.0))
    assert sorted(m.feature.id for m in found) == ["berlin", "paris"]


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (UpsertFeatures("t1", [Feature("a", 181.0, 0.0)]), "features[0].lon"),
        (UpsertFeatures("t1", [Feature("a", 0.0, float("nan"))]), "features[0].lat"),
        (FeaturesNearby("t1", 0.0, -91.0, 10.0), "lat"),
        (FeaturesNearest("t1", 0.0, 0.0, k=0), "k"),
        (FeaturesInBox("t1", 0.0, 10.0, 1.0, 5.0), "south"),
        (FeaturesInPolygon("t1", [(0, 0), (1, 0), (1, 1), (0, 1)]), "ring"),  # open
        (FeaturesInPolygon("t1", [(0, 0), (1, 0), (0, 0)]), "ring"),  # too few
        (FeaturesInPolygon("t1", [(0, 0), (200, 0), (1, 1), (0, 0)]), "ring[1].lon"),
        (FeaturesInPolygon("t1", [(0.0, float(i % 2)) for i in range(1001)]), "ring"),
    ],
)
async def test_bad_geometry_names_the_field(manager, op, field):
    """Out-of-range or NaN coordinates and bad polygons are refused."""
    with pytest.raises(ValidationError) as info:
        await manager.coordinate(op)
    assert info.value.field == field
