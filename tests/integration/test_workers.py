"""
`lake serve` with several worker processes on one port.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from lake.api.auth import hash_token
from lake.resources.embedded import free_port
from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.integration.test_cli import LAKE, env_for, run, stop, wait_ready

TOKEN = "workers-token"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def nearest_calls(metrics_address: str) -> float:
    """FeaturesNearest calls answered OK, as one scrape of /metrics says."""
    url = f"http://{metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "lake_operations_total" and s.labels == {
                "operation": "FeaturesNearest",
                "code": "OK",
            }:
                return s.value
    return 0.0


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_two_workers_share_the_port_and_stop_together(servers, database):
    """Two worker processes serve one port; every call is answered; lake status
    adds both up, and so do /metrics (served by worker 0 alone) and lake usage
    (each worker flushes its own counts); SIGTERM stops both and the parent exits
    0 with none left."""
    pg, rd = servers["postgres"], servers["redis"]
    address = f"127.0.0.1:{free_port()}"
    metrics_address = f"127.0.0.1:{free_port()}"
    env = env_for(
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=address,
        LAKE_GRPC__WORKERS="2",
        LAKE_METRICS__ADDRESS=metrics_address,
        LAKE_USAGE__FLUSH_INTERVAL="0.2",
        LAKE_POSTGRES__DSN=database,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
        LAKE_AUTH__TOKENS=(
            f'{{ "{hash_token(TOKEN)}" = {{ tenant = "t1", scope = "admin" }} }}'
        ),
    )
    proc = subprocess.Popen(
        [*LAKE, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(address, env, proc)
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        for i in range(40):  # fresh connections: the kernel spreads them
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(address, options=options) as channel:
                spatial = lake_pb2_grpc.SpatialStub(channel)
                if i == 0:
                    spatial.Upsert(
                        lake_pb2.UpsertFeaturesRequest(
                            features=[lake_pb2.Feature(id="a", lon=1.0, lat=2.0)]
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
                found = spatial.Nearest(
                    lake_pb2.NearestRequest(lon=1.0, lat=2.0, k=1),
                    metadata=metadata,
                    timeout=10,
                )
                assert [m.feature.id for m in found.matches] == ["a"]
        # lake status adds the workers up (each publishes every second).
        for _ in range(100):
            status = json.loads(
                run("status", "--address", address, "--token", TOKEN, env=env).stdout
            )
            nearest = status["operations"].get("FeaturesNearest", {})
            if nearest.get("calls") == 40:
                break
            time.sleep(0.2)
        assert nearest.get("calls") == 40, status
        assert status["workers"] == {"count": 2, "reporting": 2}
        for _ in range(100):  # the other worker publishes its figures every second
            if nearest_calls(metrics_address) == 40:
                break
            time.sleep(0.2)
        assert nearest_calls(metrics_address) == 40
        for _ in range(100):
            usage = json.loads(
                run(
                    "usage", "--json", "--address", address, "--token", TOKEN, env=env
                ).stdout
            )
            calls = {e["operation"]: e["calls"] for e in usage}
            if calls == {"UpsertFeatures": 1, "FeaturesNearest": 40}:
                break
            time.sleep(0.2)
        assert calls == {"UpsertFeatures": 1, "FeaturesNearest": 40}, usage
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert not [pid for pid in workers if alive(pid)]
