"""
Lake's client library: typed calls over gRPC, with plain Python values in and out.

Needs only grpcio and protobuf (no server dependency is imported)::

    from lake.client import LakeClient, Client

    async with LakeClient("127.0.0.1:50051", token="dev-token") as lake:
        matches = await lake.search("docs", [1.0, 0.0], k=5)

    Client("127.0.0.1:50051", token="dev-token").nearest(2.35, 48.85, k=3)

Every call carries the token, a deadline (the client's ``timeout`` unless the call
names one) and the retry policy Lake documents (``RETRY_SERVICE_CONFIG``: UNAVAILABLE
retried, four attempts at most, the server's pushback obeyed). Failures raise
Lake's own exceptions (``lake.errors``): ``NotFoundError``, ``ValidationError``
(with ``field``), ``QuotaExceededError`` (with ``quota`` and ``retry_after``),
``CircuitOpenError`` (with ``retry_after_s``), ...
"""

from __future__ import annotations

from lake.client.aio import DEFAULT_TIMEOUT_S, LakeClient
from lake.client.channel import TLS
from lake.client.errors import error_of, status_details, status_name
from lake.client.policy import (
    RETRY_POLICY,
    RETRY_SERVICE_CONFIG,
    channel_options,
    service_config_json,
)
from lake.client.sync import Client
from lake.client.types import (
    ComponentHealth,
    HealthReport,
    NewToken,
    QuotaOverview,
    TenantQuotas,
    TokenInfo,
    UsageRow,
    Written,
)
from lake.client.wire import PointsBatch
from lake.models import (
    Bucket,
    Collection,
    Feature,
    FeatureMatch,
    Point,
    PointPage,
    SeriesPoint,
    TextItem,
    VectorItem,
    VectorMatch,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RETRY_POLICY",
    "RETRY_SERVICE_CONFIG",
    "TLS",
    "Bucket",
    "Client",
    "Collection",
    "ComponentHealth",
    "Feature",
    "FeatureMatch",
    "HealthReport",
    "LakeClient",
    "NewToken",
    "Point",
    "PointPage",
    "PointsBatch",
    "QuotaOverview",
    "SeriesPoint",
    "TenantQuotas",
    "TextItem",
    "TokenInfo",
    "UsageRow",
    "VectorItem",
    "VectorMatch",
    "Written",
    "channel_options",
    "error_of",
    "service_config_json",
    "status_details",
    "status_name",
]
