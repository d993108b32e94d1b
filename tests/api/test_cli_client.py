"""
The shell client commands against a real server: lake call, lake points write,
lake token new.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta

from lake.api.auth import hash_token

LAKE = [sys.executable, "-m", "lake"]


async def lake(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = await asyncio.create_subprocess_exec(
        *LAKE,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin else None)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_call_any_rpc_with_json(api):
    """lake call sends JSON, prints JSON, and reports failures by status."""
    where = ["--address", api.server.address, "--token", "token-a"]
    code, out, err = await lake(
        "call",
        "Vectors.CreateCollection",
        *where,
        "-d",
        '{"collection": "docs", "dim": 2, "metric": "METRIC_L2"}',
    )
    assert code == 0, err
    assert json.loads(out) == {"collection": "docs", "dim": 2, "metric": "METRIC_L2"}
    body = {"collection": "docs", "items": [{"id": "a", "values": [1, 0]}]}
    code, out, err = await lake(
        "call", "Vectors.Upsert", *where, stdin=json.dumps(body)
    )
    assert (code, json.loads(out)) == (0, {"upserted": 1}), err
    code, out, err = await lake(
        "call",
        "Vectors.Search",
        *where,
        "-d",
        '{"collection": "docs", "vector": [1, 0]}',
    )
    assert json.loads(out)["matches"][0]["id"] == "a"
    code, out, err = await lake(
        "call", "Vectors.Search", *where, "-d", '{"collection": "nope", "vector": [1]}'
    )
    assert code == 1
    assert "NOT_FOUND" in err
    code, out, err = await lake(
        "call", "Vectors.Search", "--address", api.server.address, "-d", "{}"
    )
    assert code == 1
    assert "UNAUTHENTICATED" in err
    code, _, err = await lake("call", "Vectors.Nope", *where, "-d", "{}")
    assert code == 1  # refused before sending; 2 means no server answered
    assert "Vectors.Search" in err  # the error lists the methods that exist


async def test_points_write_from_csv(api, tmp_path):
    """lake points write streams a CSV to one series; the points are queryable."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rows = ["timestamp,value"] + [
        f"{(start + timedelta(seconds=i)).isoformat()},{i}" for i in range(250)
    ]
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    code, out, err = await lake(
        "points",
        "write",
        "temp",
        str(csv_file),
        "--tag",
        "room=1",
        "--batch",
        "100",
        "--address",
        api.server.address,
        "--token",
        "token-a",
    )
    assert code == 0, err
    assert json.loads(out) == {"written": 250}
    query = json.dumps(
        {
            "metric": "temp",
            "tags": {"room": "1"},
            "start": start.isoformat(),
            "end": (start + timedelta(hours=1)).isoformat(),
            "limit": 1000,
        }
    )
    code, out, err = await lake(
        "call",
        "TimeSeries.Query",
        "--address",
        api.server.address,
        "--token",
        "token-a",
        "-d",
        query,
    )
    series = json.loads(out)["series"]
    assert len(series[0]["values"]) == 250


async def test_token_new_prints_a_working_config_line():
    """The printed hash is the token's SHA-256, mapped to the tenant."""
    code, out, err = await lake("token", "new", "--tenant", "acme")
    assert code == 0, err
    token = out.splitlines()[0].removeprefix("token: ")
    assert f'"{hash_token(token)}" = "acme"' in out
    code, _, err = await lake("token", "new", "--tenant", "Bad Tenant")
    assert code == 2


async def test_status_reports_usage_pool_cache_and_backlog(api):
    """lake status shows per-operation usage and the pool, cache and event figures."""
    from lake.v1 import lake_pb2
    from tests.api.conftest import auth

    for _ in range(3):
        await api.spatial.Nearest(
            lake_pb2.NearestRequest(lon=0, lat=0), metadata=auth()
        )
    await api.spatial.Upsert(
        lake_pb2.UpsertFeaturesRequest(
            features=[lake_pb2.Feature(id="x", lon=0, lat=0)]
        ),
        metadata=auth(),
    )
    code, out, err = await lake(
        "status", "--address", api.server.address, "--token", "token-admin"
    )
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "running"
    assert status["operations"]["FeaturesNearest"]["calls"] == 3
    assert status["operations"]["UpsertFeatures"]["calls"] == 1
    assert status["pool"]["max_size"] >= status["pool"]["size"] >= 1
    assert set(status["cache"]) == {
        "hits",
        "misses",
        "errors",
        "busy",
        "skipping",
        "breaker",
        "routes",
        "connections",
        "versions",
    }
    assert set(status["cache"]["connections"]) == {"in_use", "available", "max"}
    # Version reads and the lease (lake.stores.lease) are reported.
    assert {"reads", "batches", "leased", "polls", "peers", "write_wait_ms"} <= set(
        status["cache"]["versions"]
    )
    assert status["pool"]["pending"] == 0
    assert status["events_pending"] == 1  # the stream peer is down in this fixture
    # Every dependency's protection: breaker state, retry budget, timeouts.
    protection = status["protection"]
    assert {"postgres", "redis"} <= set(protection)
    assert protection["postgres"]["breaker"]["state"] == "closed"
    assert protection["postgres"]["breaker"]["calls"] >= 4
    assert "FeaturesNearest" in protection["postgres"]["timeouts"]
