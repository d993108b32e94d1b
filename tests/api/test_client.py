"""
lake.client against a real Lake (PostgreSQL, Redis, cortex peers): every typed
method round-trips plain values, failures come back as Lake's exceptions, TLS with
a pinned CA and mTLS, and the sync client from a plain thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import trustme

from lake.client import (
    TLS,
    Client,
    Feature,
    LakeClient,
    Point,
    PointsBatch,
    TextItem,
    VectorItem,
)
from lake.errors import (
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedError,
    ValidationError,
)
from lake.tls import ServerTLS
from tests.api.conftest import running_lake
from tests.api.test_tls_api import tls_lake
from tests.certs import issue, write_ca

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def test_vector_methods_round_trip(api):
    async with LakeClient(api.server.address, token="token-a") as lake:
        made = await lake.create_collection("docs", 2, "l2")
        assert (made.name, made.dim, made.metric) == ("docs", 2, "l2")
        items = [
            VectorItem("a", [1.0, 0.0], {"kind": "x", "n": 1}),
            VectorItem("b", [0.0, 1.0], {"kind": "y"}),
        ]
        assert await lake.upsert("docs", items) == 2
        found = await lake.search("docs", [1.0, 0.1], k=2)
        assert [m.id for m in found] == ["a", "b"]
        assert found[0].metadata == {"kind": "x", "n": 1.0}
        only = await lake.search("docs", [1.0, 0.1], where={"kind": "y"}, ef_search=40)
        assert [m.id for m in only] == ["b"]
        assert await lake.delete("docs", ["a", "zz"]) == 1

        await lake.create_collection("notes", 16)
        texts = [TextItem("1", "postgres keeps vectors"), TextItem("2", "redis caches")]
        assert await lake.upsert_texts("notes", texts) == 2
        hits = await lake.search_text("notes", "redis caches", k=1)
        assert [m.id for m in hits] == ["2"]


async def test_time_series_methods_round_trip(api):
    points = [Point(HOUR + timedelta(seconds=i), float(i)) for i in range(10)]
    async with LakeClient(api.server.address, token="token-a") as lake:
        first = await lake.write_points("cpu", points + points[:1], {"host": "a"})
        assert (first.written, first.duplicates) == (10, 1)
        more = [
            PointsBatch(
                "cpu",
                tags={"host": "b"},
                timestamps_us=[int((HOUR + timedelta(seconds=i)).timestamp() * 1e6)],
                values=[100.0 + i],
            )
            for i in range(3)
        ]
        assert (await lake.write_stream(more)).written == 3
        page = await lake.query(
            "cpu", HOUR, HOUR + timedelta(hours=1), tags={"host": "a"}, limit=4
        )
        assert [p.value for p in page.points] == [0.0, 1.0, 2.0, 3.0]
        assert page.points[0].ts == HOUR
        assert page.points[0].tags == {"host": "a"}
        assert page.next_cursor is not None
        rest = await lake.query(
            "cpu",
            HOUR,
            HOUR + timedelta(hours=1),
            tags={"host": "a"},
            cursor=page.next_cursor,
        )
        assert len(rest.points) == 6
        assert rest.next_cursor is None
        buckets = await lake.aggregate(
            "cpu", HOUR, HOUR + timedelta(hours=1), timedelta(minutes=1), "sum"
        )
        assert [(b.start, b.value, b.count) for b in buckets] == [
            (HOUR, sum(range(10)) + 303.0, 13)
        ]


async def test_spatial_methods_round_trip(api):
    features = [
        Feature("paris", 2.35, 48.85, {"name": "Paris"}),
        Feature("lyon", 4.83, 45.76),
        Feature("tokyo", 139.69, 35.69),
    ]
    async with LakeClient(api.server.address, token="token-a") as lake:
        assert await lake.upsert_features(features) == 3
        near = await lake.nearby(2.35, 48.85, 500_000)
        assert [m.feature.id for m in near] == ["paris", "lyon"]
        assert near[0].feature.properties == {"name": "Paris"}
        assert near[1].distance_m > 300_000
        nearest = await lake.nearest(139.0, 35.0, k=1)
        assert nearest[0].feature.id == "tokyo"
        box = await lake.in_box(0, 40, 10, 50)
        assert {m.feature.id for m in box} == {"paris", "lyon"}
        ring = [(0.0, 47.0), (10.0, 47.0), (10.0, 50.0), (0.0, 50.0), (0.0, 47.0)]
        assert [m.feature.id for m in await lake.in_polygon(ring)] == ["paris"]


async def test_health_status_usage_tokens_and_quotas(api):
    address = api.server.address
    async with LakeClient(address) as anyone:
        report = await anyone.health()
    assert report.ready is True
    assert report.state == "running"
    assert {"postgres", "redis"} <= {c.name for c in report.components}
    async with LakeClient(address, token="token-admin") as admin:
        await admin.nearest(0, 0)
        status = await admin.status()
        assert status["operations"]["FeaturesNearest"]["calls"] == 1
        rows = await admin.usage(tenant="tenant-a", granularity="day")
        assert [(r.tenant, r.operation, r.calls) for r in rows] == [
            ("tenant-a", "FeaturesNearest", 1)
        ]
        made = await admin.create_token(
            "acme", "read", expires_in=timedelta(days=1), note="dash"
        )
        assert made.token
        assert (made.info.tenant, made.info.scope, made.info.note) == (
            "acme",
            "read",
            "dash",
        )
        assert made.info.expires_at is not None
        listed = await admin.list_tokens(tenant="acme")
        assert [t.id for t in listed] == [made.info.id]
        async with LakeClient(address, token=made.token) as reader:
            assert await reader.nearest(0, 0) == []
        revoked = await admin.revoke_token(made.info.id)
        assert revoked.revoked_at is not None
        assert await admin.list_tokens(tenant="acme") == []
        set_ = await admin.set_quotas("acme", {"read_per_s": 5})
        assert set_.overrides == {"read_per_s": 5.0}
        shown = await admin.show_quotas()
        assert [t.tenant for t in shown.tenants] == ["acme"]
        assert "max_vectors" in shown.defaults


async def test_failures_raise_lakes_exceptions(lake_settings):
    """NOT_FOUND, INVALID_ARGUMENT (with the field), ALREADY_EXISTS,
    FAILED_PRECONDITION, UNAUTHENTICATED, PERMISSION_DENIED, DEADLINE_EXCEEDED
    and a quota's RESOURCE_EXHAUSTED, each as its class."""
    lake_settings["quotas"]["window_s"] = 60
    lake_settings["quotas"]["default"]["search_per_s"] = 2 / 60
    async with running_lake(lake_settings) as (server, _, _):
        async with LakeClient(server.address, token="token-a") as lake:
            with pytest.raises(NotFoundError):
                await lake.search("nope", [1.0, 0.0])
            with pytest.raises(ValidationError) as bad:
                await lake.nearest(500, 0)
            assert bad.value.field == "lon"
            await lake.create_collection("docs", 2)
            with pytest.raises(ConflictError):
                await lake.create_collection("docs", 3)
            with pytest.raises(UnsupportedError):  # no cortex peer configured
                await lake.upsert_texts("docs", [TextItem("1", "hello")])
            with pytest.raises(PermissionDeniedError):
                await lake.status()
            with pytest.raises(DeadlineExceededError):
                await lake.nearest(0, 0, timeout=1e-6)
            await lake.search("docs", [1.0, 0.0])
            with pytest.raises(QuotaExceededError) as quota:
                await lake.search("docs", [1.0, 0.0])
            assert (quota.value.quota, quota.value.tenant) == (
                "search_per_s",
                "tenant-a",
            )
            assert quota.value.retry_after is not None
        async with LakeClient(server.address, token="wrong") as stranger:
            with pytest.raises(UnauthenticatedError):
                await stranger.nearest(0, 0)


async def test_the_sync_client_from_a_plain_thread(api):
    """Client, called from a worker thread with no event loop."""
    address = api.server.address

    def work() -> list[str]:
        with Client(address, token="token-a") as lake:
            lake.upsert_features([Feature("x", 1.0, 1.0)])
            return [m.feature.id for m in lake.nearest(1.0, 1.0, k=1)]

    assert await asyncio.to_thread(work) == ["x"]


async def test_tls_with_a_pinned_ca_and_a_client_certificate(manager, tmp_path):
    """mTLS: a client trusting Lake's CA and presenting a certificate gets in, one
    without a certificate is refused; ``server_name`` reaches a certificate made
    out to another name than the dialled address."""
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    named = issue(ca, tmp_path, "server", "lake.test")
    client = issue(ca, tmp_path, "client", "lake-client")
    tls = ServerTLS(str(named.cert), str(named.key), str(ca_file))
    async with tls_lake(manager, tls) as server:
        mutual = TLS(str(ca_file), str(client.cert), str(client.key), "lake.test")
        async with LakeClient(server.address, tls=mutual) as lake:
            assert (await lake.health()).ready is True
        no_cert = TLS(str(ca_file), server_name="lake.test")
        async with LakeClient(server.address, tls=no_cert) as lake:
            with pytest.raises(UnavailableError):
                await lake.health()
