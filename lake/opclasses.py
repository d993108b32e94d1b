"""
Operation classes for rate quotas: every operation of the routing table
(``lake.routes.ROUTES``) is a ``read``, a ``write``, a ``search`` (vector
similarity: an HNSW scan) or a ``text`` (it asks the cortex peer for embeddings).

A tenant's ``quotas.default.<class>_per_s`` (or its override) bounds its calls of
that class per second, across every instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from lake.operations import (
    AggregatePoints,
    CreateCollection,
    DeleteVectors,
    FeaturesInBox,
    FeaturesInPolygon,
    FeaturesNearby,
    FeaturesNearest,
    QueryPoints,
    SearchText,
    SearchVectors,
    UpsertFeatures,
    UpsertTexts,
    UpsertVectors,
    WritePoints,
    WritePointsMany,
)

__all__ = ["CLASSES", "OPERATION_CLASSES", "OperationClass"]

OperationClass = Literal["read", "write", "search", "text"]
CLASSES: tuple[OperationClass, ...] = ("read", "write", "search", "text")

# Every routed operation has exactly one class (a unit test holds this to ROUTES).
OPERATION_CLASSES: Mapping[type[Any], OperationClass] = {
    QueryPoints: "read",
    AggregatePoints: "read",
    FeaturesNearby: "read",
    FeaturesNearest: "read",
    FeaturesInBox: "read",
    FeaturesInPolygon: "read",
    SearchVectors: "search",
    SearchText: "text",
    UpsertTexts: "text",
    CreateCollection: "write",
    UpsertVectors: "write",
    DeleteVectors: "write",
    WritePoints: "write",
    WritePointsMany: "write",
    UpsertFeatures: "write",
}
