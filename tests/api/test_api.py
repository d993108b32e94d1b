"""
Every lake.v1 RPC over a real server, with auth, status mapping and deadlines.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from lake.mesh.peers import PeerServer
from lake.stores.spatial import PgSpatialStore
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def stamp(ts: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(ts)
    return out


def us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


def struct(**fields) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(fields)
    return out


async def expect(code: grpc.StatusCode, call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def test_vector_rpcs(api):
    """CreateCollection, Upsert, Search (with a filter), Delete."""
    made = await api.vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="docs", dim=2, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    assert (made.collection, made.dim, made.metric) == (
        "docs",
        2,
        lake_pb2.METRIC_COSINE,
    )
    items = [
        lake_pb2.VectorItem(id="a", values=[1.0, 0.0], metadata=struct(kind="x")),
        lake_pb2.VectorItem(id="b", values=[0.0, 1.0], metadata=struct(kind="y")),
    ]
    up = await api.vectors.Upsert(
        lake_pb2.UpsertVectorsRequest(collection="docs", items=items), metadata=auth()
    )
    assert up.upserted == 2
    found = await api.vectors.Search(
        lake_pb2.SearchVectorsRequest(collection="docs", vector=[0.1, 1.0], k=2),
        metadata=auth(),
    )
    assert [m.id for m in found.matches] == ["b", "a"]
    assert dict(found.matches[0].metadata) == {"kind": "y"}
    filtered = await api.vectors.Search(
        lake_pb2.SearchVectorsRequest(
            collection="docs", vector=[0.1, 1.0], where=struct(kind="x")
        ),
        metadata=auth(),
    )
    assert [m.id for m in filtered.matches] == ["a"]
    gone = await api.vectors.Delete(
        lake_pb2.DeleteVectorsRequest(collection="docs", ids=["a"]), metadata=auth()
    )
    assert gone.deleted == 1


async def test_text_rpcs_go_through_cortex(api):
    """UpsertTexts and SearchText embed with the cortex peers, found by discovery."""
    await api.vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    texts = [
        lake_pb2.TextItem(id="1", text="the quick brown fox"),
        lake_pb2.TextItem(id="2", text="postgres tuning for vector search"),
        lake_pb2.TextItem(id="3", text="a lazy dog sleeps"),
    ]
    up = await api.vectors.UpsertTexts(
        lake_pb2.UpsertTextsRequest(collection="notes", items=texts), metadata=auth()
    )
    assert up.upserted == 3
    for _ in range(4):
        found = await api.vectors.SearchText(
            lake_pb2.SearchTextRequest(collection="notes", text="vector search", k=1),
            metadata=auth(),
        )
        assert [m.id for m in found.matches] == ["2"]
        assert found.matches[0].metadata["text"] == "postgres tuning for vector search"
    # Round-robin over both discovered cortex instances, once both are connected.
    for _ in range(50):
        if all(peer.deadlines for peer in api.cortex):
            break
        await api.vectors.SearchText(
            lake_pb2.SearchTextRequest(collection="notes", text="again"),
            metadata=auth(),
        )
        await asyncio.sleep(0.02)
    assert all(peer.deadlines for peer in api.cortex)


async def test_timeseries_rpcs(api):
    """Write, WriteStream (client streaming), Query with paging, Aggregate."""
    stamps = [NOW + timedelta(seconds=i) for i in range(10)]
    w = await api.series.Write(
        lake_pb2.WritePointsRequest(
            metric="cpu",
            tags={"host": "a"},
            timestamps_us=[us(t) for t in stamps[:5]],
            values=[float(i) for i in range(5)],
        ),
        metadata=auth(),
    )
    assert w.written == 5

    async def more():
        for i in (5, 8):
            yield lake_pb2.WritePointsRequest(
                metric="cpu",
                tags={"host": "a"},
                timestamps_us=[us(t) for t in stamps[i : i + 3]],
                values=[float(j) for j in range(i, min(i + 3, 10))],
            )

    streamed = await api.series.WriteStream(more(), metadata=auth())
    assert streamed.written == 5
    page = await api.series.Query(
        lake_pb2.QueryPointsRequest(
            metric="cpu",
            start=stamp(NOW),
            end=stamp(NOW + timedelta(minutes=1)),
            limit=6,
        ),
        metadata=auth(),
    )
    assert list(page.series[0].values) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert page.series[0].tags == {"host": "a"}
    rest = await api.series.Query(
        lake_pb2.QueryPointsRequest(
            metric="cpu",
            start=stamp(NOW),
            end=stamp(NOW + timedelta(minutes=1)),
            limit=6,
            cursor=page.next_cursor,
        ),
        metadata=auth(),
    )
    assert list(rest.series[0].values) == [6.0, 7.0, 8.0, 9.0]
    assert rest.next_cursor == ""
    bucket = duration_pb2.Duration()
    bucket.FromTimedelta(timedelta(seconds=5))
    agg = await api.series.Aggregate(
        lake_pb2.AggregatePointsRequest(
            metric="cpu",
            start=stamp(NOW),
            end=stamp(NOW + timedelta(seconds=10)),
            bucket=bucket,
            aggregate=lake_pb2.AGGREGATE_SUM,
        ),
        metadata=auth(),
    )
    assert [(b.value, b.count) for b in agg.buckets] == [(10.0, 5), (35.0, 5)]


async def test_spatial_rpcs(api):
    """Upsert, Nearby, Nearest, InBox, InPolygon."""
    features = [
        lake_pb2.Feature(id="paris", lon=2.3522, lat=48.8566, properties=struct(n=1)),
        lake_pb2.Feature(id="london", lon=-0.1276, lat=51.5072),
    ]
    up = await api.spatial.Upsert(
        lake_pb2.UpsertFeaturesRequest(features=features), metadata=auth()
    )
    assert up.upserted == 2
    near = await api.spatial.Nearby(
        lake_pb2.NearbyRequest(lon=2.35, lat=48.85, radius_m=5000), metadata=auth()
    )
    assert [m.feature.id for m in near.matches] == ["paris"]
    assert near.matches[0].feature.properties["n"] == 1
    nearest = await api.spatial.Nearest(
        lake_pb2.NearestRequest(lon=0.0, lat=51.0, k=2), metadata=auth()
    )
    assert [m.feature.id for m in nearest.matches] == ["london", "paris"]
    box = await api.spatial.InBox(
        lake_pb2.InBoxRequest(west=-1, south=50, east=1, north=52), metadata=auth()
    )
    assert [m.feature.id for m in box.matches] == ["london"]
    poly = await api.spatial.InPolygon(
        lake_pb2.InPolygonRequest(lons=[2, 3, 3, 2, 2], lats=[48, 48, 49, 49, 48]),
        metadata=auth(),
    )
    assert [m.feature.id for m in poly.matches] == ["paris"]


async def test_status_mapping(api, monkeypatch):
    """Each kind of failure reaches the client as its one precise status."""
    v = api.vectors
    await v.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="docs", dim=2, metric=lake_pb2.METRIC_L2
        ),
        metadata=auth(),
    )
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        v.Upsert(
            lake_pb2.UpsertVectorsRequest(
                collection="docs",
                items=[lake_pb2.VectorItem(id="a", values=[1.0, float("nan")])],
            ),
            metadata=auth(),
        ),
    )
    assert details.startswith("items[0].values: ")
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        v.CreateCollection(
            lake_pb2.CreateCollectionRequest(collection="x", dim=2), metadata=auth()
        ),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        v.Search(
            lake_pb2.SearchVectorsRequest(collection="nope", vector=[1, 0]),
            metadata=auth(),
        ),
    )
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        v.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="docs", dim=3, metric=lake_pb2.METRIC_L2
            ),
            metadata=auth(),
        ),
    )
    await expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        v.Upsert(
            lake_pb2.UpsertVectorsRequest(
                collection="docs",
                items=[lake_pb2.VectorItem(id="big", values=[0.5] * 1_200_000)],
            ),
            metadata=auth(),
        ),
    )

    async def broken(self, *args, **kwargs):
        msg = 'SELECT secret FROM features -- asyncpg.exceptions.PostgresError "pw"'
        raise RuntimeError(msg)

    monkeypatch.setattr(PgSpatialStore, "nearest", broken)
    details = await expect(
        grpc.StatusCode.INTERNAL,
        api.spatial.Nearest(lake_pb2.NearestRequest(lon=0, lat=0), metadata=auth()),
    )
    assert details.startswith("internal error (error id ")
    for leak in ("SELECT", "asyncpg", "features", "RuntimeError", "Traceback"):
        assert leak not in details


async def test_peer_failures_map_to_unavailable_and_failed_precondition(
    api, cortex_servers
):
    """Cortex down: UNAVAILABLE (retryable); text ops on a Lake without cortex would
    be FAILED_PRECONDITION, checked through the mesh client's own error."""
    await api.vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    for s in cortex_servers:
        await s.stop(None)
    await expect(
        grpc.StatusCode.UNAVAILABLE,
        api.vectors.SearchText(
            lake_pb2.SearchTextRequest(collection="notes", text="anything"),
            metadata=auth(),
        ),
    )
    report = await api.manager.health()
    assert report.component("mesh.cortex").status.name == "DEGRADED"
    assert report.ready


async def test_authentication(api):
    """No token or a wrong one: UNAUTHENTICATED; a token asking for another tenant:
    PERMISSION_DENIED; health needs no token."""
    req = lake_pb2.NearestRequest(lon=0, lat=0)
    await expect(grpc.StatusCode.UNAUTHENTICATED, api.spatial.Nearest(req))
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        api.spatial.Nearest(req, metadata=auth("token-z")),
    )
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        api.spatial.Nearest(req, metadata=(("authorization", "Basic dG9rZW4tYQ=="),)),
    )
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        api.spatial.Nearest(
            req, metadata=(*auth("token-a"), ("x-lake-tenant", "tenant-b"))
        ),
    )
    ok = await api.spatial.Nearest(
        req, metadata=(*auth("token-a"), ("x-lake-tenant", "tenant-a"))
    )
    assert ok.matches is not None


async def test_tokens_scope_data_to_their_tenant(api):
    """Tenant B's token never sees tenant A's rows."""
    await api.spatial.Upsert(
        lake_pb2.UpsertFeaturesRequest(
            features=[lake_pb2.Feature(id="a-only", lon=1, lat=1)]
        ),
        metadata=auth("token-a"),
    )
    seen_a = await api.spatial.Nearest(
        lake_pb2.NearestRequest(lon=1, lat=1, k=5), metadata=auth("token-a")
    )
    seen_b = await api.spatial.Nearest(
        lake_pb2.NearestRequest(lon=1, lat=1, k=5), metadata=auth("token-b")
    )
    assert [m.feature.id for m in seen_a.matches] == ["a-only"]
    assert list(seen_b.matches) == []


async def test_deadline_reaches_the_peer(api):
    """The peer's deadline is no later than the caller's; none given: the server max."""
    await api.vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    req = lake_pb2.SearchTextRequest(collection="notes", text="hello")
    for peer in api.cortex:
        peer.deadlines.clear()
    await api.vectors.SearchText(req, metadata=auth(), timeout=1.5)
    seen = [d for p in api.cortex for d in p.deadlines]
    assert len(seen) == 1
    assert seen[0] is not None
    assert 0 < seen[0] <= 1.5
    for peer in api.cortex:
        peer.deadlines.clear()
    await api.vectors.SearchText(req, metadata=auth())  # no deadline from the client
    seen = [d for p in api.cortex for d in p.deadlines]
    assert seen[0] is not None
    assert seen[0] <= 5.0  # the server's maximum, below the 10 s call timeout


async def test_deadline_exceeded_when_the_peer_is_slow(api):
    """A peer slower than the caller's deadline gives DEADLINE_EXCEEDED promptly."""
    await api.vectors.CreateCollection(
        lake_pb2.CreateCollectionRequest(
            collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
        ),
        metadata=auth(),
    )
    for peer in api.cortex:
        peer.delay = 3.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    await expect(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        api.vectors.SearchText(
            lake_pb2.SearchTextRequest(collection="notes", text="slow"),
            metadata=auth(),
            timeout=0.5,
        ),
    )
    assert loop.time() - started < 2.0


async def upsert_one_by_one(api, n: int) -> None:
    """
    ``n`` features upserted one per call, alternating two tenants, 20 calls at a
    time (a write waits the cache lease, 30 ms, while other Lakes share the
    database: one at a time could take most of a minute).
    """

    async def upsert(i: int) -> None:
        tok = "token-a" if i % 2 else "token-b"
        await api.spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(
                features=[lake_pb2.Feature(id=f"f{i}", lon=1, lat=1)]
            ),
            metadata=auth(tok),
        )

    for start in range(0, n, 20):
        await asyncio.gather(*(upsert(i) for i in range(start, min(start + 20, n))))


async def test_outbox_delivers_every_event_once_after_stream_outage(api):
    """Stream down during 1,000 writes: all succeed; once it is up, every event
    arrives exactly once, in order per tenant."""
    await upsert_one_by_one(api, 1000)
    failed = await api.manager.deliver_events()
    assert failed.failed  # stream is down: nothing delivered, nothing lost
    assert api.stream.events == []

    peer = PeerServer(api.stream, api.stream_address)
    await peer.start()
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20
        while len(api.stream.events) < 1000 and loop.time() < give_up:
            report = await api.manager.deliver_events()
            if report.failed or not report.delivered:
                await asyncio.sleep(0.2)  # the channel reconnects after a backoff
        report = await api.manager.deliver_events()
        assert report.delivered == 0  # nothing left, nothing sent again
    finally:
        await peer.stop(None)
    events = api.stream.events
    assert len(events) == 1000
    assert api.stream.received == 1000  # the relay sent nothing twice
    assert len({e["event_id"] for e in events}) == 1000
    for tenant in ("tenant-a", "tenant-b"):
        mine = [e for e in events if e["tenant"] == tenant]
        assert len(mine) == 500
        sequences = [int(e["sequence"]) for e in mine]
        assert sequences == sorted(sequences)
        assert {e["kind"] for e in mine} == {"features.upserted"}


async def test_text_operations_without_cortex_fail_precondition(lake_settings):
    """A Lake with no cortex peer answers text calls FAILED_PRECONDITION."""
    from tests.api.conftest import running_lake

    lake_settings["mesh"]["peers"] = {}
    async with running_lake(lake_settings) as (_, _, channel):
        stub = lake_pb2_grpc.VectorsStub(channel)
        await stub.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="notes", dim=16, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )
        details = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            stub.SearchText(
                lake_pb2.SearchTextRequest(collection="notes", text="hi"),
                metadata=auth(),
            ),
        )
        assert details == "peer cortex is not configured"


async def test_peers_found_through_dns(cortex_servers):
    """A dns:/// target resolves and balances across what the name points at."""
    from lake.mesh.client import open_mesh

    port = cortex_servers[0].port
    async with open_mesh(peers={"cortex": f"dns:///localhost:{port}"}) as mesh:
        vectors = await mesh.embed(["hello", "world"])
    assert len(vectors) == 2
    assert len(vectors[0]) == 16


async def test_two_instances_share_the_relay_without_duplicates(
    api, lake_settings, cortex_servers
):
    """Two Lake instances relaying at once deliver every event exactly once."""
    from lake.container import aresolve, create_container

    await upsert_one_by_one(api, 300)
    peer = PeerServer(api.stream, api.stream_address)
    await peer.start()
    other = await aresolve(create_container(lake_settings).manager)
    await other.start()
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20
        while len(api.stream.events) < 300 and loop.time() < give_up:
            await asyncio.gather(api.manager.deliver_events(), other.deliver_events())
            await asyncio.sleep(0.05)
    finally:
        await other.stop()
        await peer.stop(None)
    assert len(api.stream.events) == 300
    assert api.stream.received == 300  # no event was sent by both instances
