"""
Every input has an answer: the hostile inputs once answered INTERNAL or UNKNOWN, and
the field names a client must be able to act on, over a real server.
"""

from __future__ import annotations

import random
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from structlog.testing import capture_logs

from lake.api import convert
from lake.v1 import lake_pb2, lake_pb2_grpc, tokens_pb2, tokens_pb2_grpc
from tests.api.conftest import auth, running_lake
from tests.api.test_api import NOW, expect, stamp, us

NAN, INF = float("nan"), float("inf")
# Incompressible values, so PostgreSQL cannot squeeze the row under its btree cap.
TAGS_25_BY_100 = {f"tag{i}": random.Random(i).randbytes(50).hex() for i in range(25)}


def struct(value: float) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update({"a": {"b": [1, value]}})
    return out


async def make_collections(api) -> None:
    for name, dim in (("docs", 2), ("notes", 16)):
        await api.vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection=name, dim=dim, metric=lake_pb2.METRIC_COSINE
            ),
            metadata=auth(),
        )


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
async def test_non_finite_numbers_in_structs_name_their_field(api, bad):
    """NaN and ±Infinity inside metadata, where and properties: INVALID_ARGUMENT."""
    await make_collections(api)
    v, s = api.vectors, api.spatial
    calls = {
        "items[0].metadata": v.Upsert(
            lake_pb2.UpsertVectorsRequest(
                collection="docs",
                items=[
                    lake_pb2.VectorItem(id="a", values=[1, 0], metadata=struct(bad))
                ],
            ),
            metadata=auth(),
        ),
        "items[0].metadata ": v.UpsertTexts(
            lake_pb2.UpsertTextsRequest(
                collection="notes",
                items=[lake_pb2.TextItem(id="a", text="hi", metadata=struct(bad))],
            ),
            metadata=auth(),
        ),
        "where": v.Search(
            lake_pb2.SearchVectorsRequest(
                collection="docs", vector=[1, 0], where=struct(bad)
            ),
            metadata=auth(),
        ),
        "where ": v.SearchText(
            lake_pb2.SearchTextRequest(
                collection="notes", text="hi", where=struct(bad)
            ),
            metadata=auth(),
        ),
        "features[0].properties": s.Upsert(
            lake_pb2.UpsertFeaturesRequest(
                features=[
                    lake_pb2.Feature(id="f", lon=1, lat=1, properties=struct(bad))
                ]
            ),
            metadata=auth(),
        ),
    }
    for field, call in calls.items():
        details = await expect(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert details.startswith(f"{field.strip()}: "), details


@pytest.mark.parametrize("seconds", [2**63 - 1, -(2**63)])
async def test_bucket_beyond_any_duration_is_invalid(api, seconds):
    """An Aggregate bucket of ±2^63 seconds: INVALID_ARGUMENT naming bucket."""
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.series.Aggregate(
            lake_pb2.AggregatePointsRequest(
                metric="cpu",
                start=stamp(NOW),
                end=stamp(NOW + timedelta(minutes=30)),
                bucket=duration_pb2.Duration(seconds=seconds),
                aggregate=lake_pb2.AGGREGATE_AVG,
            ),
            metadata=auth(),
        ),
    )
    assert details.startswith("bucket: ")


async def test_too_many_long_tags_are_refused_before_the_database(api):
    """25 tags of 100 characters (a 5,496-byte btree row): INVALID_ARGUMENT on tags."""
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.series.Write(
            lake_pb2.WritePointsRequest(
                metric="cpu",
                tags=TAGS_25_BY_100,
                timestamps_us=[us(NOW)],
                values=[1.0],
            ),
            metadata=auth(),
        ),
    )
    assert details == "tags: more than 16 tags"
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.series.Write(
            lake_pb2.WritePointsRequest(
                metric="cpu",
                tags={f"tag{i}": "\U0001f600" * 64 for i in range(16)},
                timestamps_us=[us(NOW)],
                values=[1.0],
            ),
            metadata=auth(),
        ),
    )
    assert details.startswith("tags: more than 1024 bytes")


async def test_a_refused_statement_logs_its_sqlstate(lake_settings):
    """With the tag caps lifted, PostgreSQL refuses the row: INVALID_ARGUMENT for the
    client, SQLSTATE 54000 in the operator's log line, no SQL anywhere."""
    lake_settings["limits"].update(max_tags=100, max_tags_bytes=100_000)
    async with running_lake(lake_settings) as (_, _, channel):
        series = lake_pb2_grpc.TimeSeriesStub(channel)
        with capture_logs() as logs:
            details = await expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                series.Write(
                    lake_pb2.WritePointsRequest(
                        metric="cpu",
                        tags=TAGS_25_BY_100,
                        timestamps_us=[us(NOW)],
                        values=[1.0],
                    ),
                    metadata=auth(),
                ),
            )
    assert details == "request: too large for the database to store"
    refused = [e for e in logs if e["event"] == "rpc_refused"]
    assert refused, logs
    assert refused[0]["detail"].startswith("sqlstate 54000 (")
    assert "INSERT" not in str(refused)
    assert TAGS_25_BY_100["tag0"] not in str(refused)


@pytest.mark.parametrize(
    "path",
    [
        "/lake.v1.Vectors/Search",
        "/lake.v1.Spatial/Nearest",
        "/lake.v1.LakeHealth/GetHealth",
        "/grpc.health.v1.Health/Check",
    ],
)
async def test_a_corrupt_body_is_invalid_argument_without_exception_text(api, path):
    """Bytes 0a ff ff ff ff 0f: INVALID_ARGUMENT with a fixed message, no class name."""
    call = api.channel.unary_unary(path)
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        call(b"\x0a\xff\xff\xff\xff\x0f", metadata=auth()),
    )
    assert details == "request: body could not be decoded"


async def test_a_corrupt_message_in_a_stream_ends_the_stream_invalid(api):
    """A request stream whose second message does not decode: INVALID_ARGUMENT."""
    good = lake_pb2.WritePointsRequest(
        metric="cpu", timestamps_us=[us(NOW)], values=[1.0]
    ).SerializeToString()
    call = api.channel.stream_unary("/lake.v1.TimeSeries/WriteStream")
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        call(iter([good, b"\x0a\xff\xff\xff\xff\x0f"]), metadata=auth()),
    )
    assert details == "request: body could not be decoded"


async def test_a_corrupt_body_without_a_token_is_still_unauthenticated(api):
    """Authentication comes first: a corrupt body without a token is UNAUTHENTICATED."""
    call = api.channel.unary_unary("/lake.v1.Vectors/Search")
    await expect(grpc.StatusCode.UNAUTHENTICATED, call(b"\x0a\xff\xff\xff\xff\x0f"))


async def test_errors_name_fields_as_the_request_spells_them(api):
    """items[0].values, values[0], timestamps_us[0], features[0].lat, lons[1]."""
    await make_collections(api)
    old = us(NOW) - 400 * 86_400 * 1_000_000
    cases = {
        "items[0].values": api.vectors.Upsert(
            lake_pb2.UpsertVectorsRequest(
                collection="docs", items=[lake_pb2.VectorItem(id="a", values=[1, NAN])]
            ),
            metadata=auth(),
        ),
        "items[1].values": api.vectors.Upsert(
            lake_pb2.UpsertVectorsRequest(
                collection="docs",
                items=[
                    lake_pb2.VectorItem(id="a", values=[1, 0]),
                    lake_pb2.VectorItem(id="b", values=[1, 0, 0]),
                ],
            ),
            metadata=auth(),
        ),
        "values[1]": api.series.Write(
            lake_pb2.WritePointsRequest(
                metric="cpu", timestamps_us=[us(NOW), us(NOW) + 1], values=[1.0, NAN]
            ),
            metadata=auth(),
        ),
        "timestamps_us[0]": api.series.Write(
            lake_pb2.WritePointsRequest(
                metric="cpu", timestamps_us=[old], values=[1.0]
            ),
            metadata=auth(),
        ),
        "features[0].lat": api.spatial.Upsert(
            lake_pb2.UpsertFeaturesRequest(
                features=[lake_pb2.Feature(id="f", lon=1.0, lat=5e-324)]
            ),
            metadata=auth(),
        ),
        "lons[1]": api.spatial.InPolygon(
            lake_pb2.InPolygonRequest(lons=[0, 181, 1, 0], lats=[0, 0, 1, 0], limit=10),
            metadata=auth(),
        ),
        "collection": api.vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="Bad", dim=2, metric=lake_pb2.METRIC_L2
            ),
            metadata=auth(),
        ),
        "dim": api.vectors.CreateCollection(
            lake_pb2.CreateCollectionRequest(
                collection="big", dim=100_000, metric=lake_pb2.METRIC_L2
            ),
            metadata=auth(),
        ),
    }
    for field, call in cases.items():
        details = await expect(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert details.startswith(f"{field}: "), (field, details)


@pytest.mark.parametrize(
    "request_",
    [
        lake_pb2.NearbyRequest(lon=5e-324, lat=1.0, radius_m=10.0),
        lake_pb2.NearbyRequest(lon=1.0, lat=1.0, radius_m=5e-324),
        lake_pb2.NearestRequest(lon=1.0, lat=-5e-324),
        lake_pb2.InBoxRequest(west=5e-324, south=0, east=1, north=1),
    ],
)
async def test_subnormal_coordinates_are_refused_before_the_database(api, request_):
    """5e-324 (earthdistance underflows on it): INVALID_ARGUMENT naming the field."""
    method = {
        lake_pb2.NearbyRequest: api.spatial.Nearby,
        lake_pb2.NearestRequest: api.spatial.Nearest,
        lake_pb2.InBoxRequest: api.spatial.InBox,
    }[type(request_)]
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, method(request_, metadata=auth())
    )
    assert "subnormal" in details
    assert details.split(":")[0] in {f.name for f, _ in request_.ListFields()}


async def test_an_oversized_batch_is_refused_before_conversion(api, monkeypatch):
    """200,000 points: INVALID_ARGUMENT on the count, without converting one point."""
    converted = []

    def spy(*args):
        converted.append(args)
        return []

    monkeypatch.setattr(convert, "us_to_datetimes", spy)
    start = us(NOW)
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.series.Write(
            lake_pb2.WritePointsRequest(
                metric="cpu",
                timestamps_us=range(start, start + 200_000),
                values=[1.0] * 200_000,
            ),
            metadata=auth(),
        ),
    )
    assert details == "timestamps_us: more than 10000 items"
    assert converted == []


async def test_an_aggregate_that_overflows_is_invalid_argument(api):
    """SUM over two points of 1e308: INVALID_ARGUMENT, the SQLSTATE in the log."""
    await api.series.Write(
        lake_pb2.WritePointsRequest(
            metric="big", timestamps_us=[us(NOW), us(NOW) + 1], values=[1e308, 1e308]
        ),
        metadata=auth(),
    )
    with capture_logs() as logs:
        details = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            api.series.Aggregate(
                lake_pb2.AggregatePointsRequest(
                    metric="big",
                    start=stamp(NOW),
                    end=stamp(NOW + timedelta(minutes=30)),
                    bucket=duration_pb2.Duration(seconds=3600),
                    aggregate=lake_pb2.AGGREGATE_SUM,
                ),
                metadata=auth(),
            ),
        )
    assert details == "request: a number overflows what the database holds"
    refused = [e for e in logs if e["event"] == "rpc_refused"]
    assert refused[0]["detail"].startswith("sqlstate 22003 (")


@pytest.mark.parametrize("seconds", [2**63 - 1, -(2**63)])
async def test_token_expiry_beyond_any_duration_is_invalid(api, seconds):
    """Tokens.Create with expires_in of +-2^63 s: INVALID_ARGUMENT, not INTERNAL."""
    stub = tokens_pb2_grpc.TokensStub(api.channel)
    request = tokens_pb2.CreateTokenRequest(
        tenant="tenant-a",
        scope=tokens_pb2.TOKEN_SCOPE_READ,
        expires_in=duration_pb2.Duration(seconds=seconds),
    )
    details = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Create(request, metadata=auth("token-admin")),
    )
    assert details.startswith("expires_in:")
