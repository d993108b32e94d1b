"""
Three ``lake serve`` processes on one PostgreSQL database and one Redis, as a
deployment runs them, and the client a deployment should use: gRPC's round robin
over every address, watching each instance's health, with the retry policy Lake
documents.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.api.auth import hash_token
from lake.client.policy import channel_options
from lake.mesh.peers import StreamPeer
from lake.mesh.v1 import peers_pb2
from lake.v1 import health_pb2 as lake_health_pb2
from lake.v1 import health_pb2_grpc as lake_health_grpc
from tests.waiting import eventually

__all__ = [
    "SERVICE_CONFIG",
    "TOKENS",
    "Instance",
    "RecordingStream",
    "auth",
    "balanced_channel",
    "lake",
    "pinned_channel",
    "served",
    "status",
]

# The client policy the README documents ("Running several instances"): round
# robin over the instances that report lake.ready SERVING (client-side health
# checking: a stopping instance reports NOT_SERVING for grpc.drain_s before it
# refuses calls, so no call is on its way to it when it stops), and a call that
# ended UNAVAILABLE (an instance refusing while it stops or starts) retried up to
# 3 more times on the next instance round robin picks.
# The policy lake.client documents, with round robin and client-side health
# checking (lake.ready): a draining instance is left out before it stops.
CHANNEL_OPTIONS: list[tuple[str, Any]] = channel_options(round_robin=True)
SERVICE_CONFIG: dict[str, Any] = json.loads(
    dict(CHANNEL_OPTIONS)["grpc.service_config"]
)

# Settings tokens, one tenant per test so that counts never mix.
TOKENS: dict[str, Any] = {
    "token-ryw": "ryw",
    "token-events": "events",
    "token-meter": "meter",
    "token-roll": "roll",
    "token-admin": {"tenant": "ops", "scope": "admin"},
}


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def balanced_channel(addresses: Sequence[str]) -> grpc.aio.Channel:
    """One channel over every instance: round robin, with the retry policy."""
    target = "ipv4:" + ",".join(addresses)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def pinned_channel(address: str) -> grpc.aio.Channel:
    """A channel to one instance only (a local subchannel pool, so it shares no
    connection with the balanced channel)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    return grpc.aio.insecure_channel(f"ipv4:{address}", options=options)


async def status(channel: grpc.aio.Channel) -> dict[str, Any]:
    """One instance's operator figures (LakeHealth/GetStatus, admin token)."""
    stub = lake_health_grpc.LakeHealthStub(channel)
    reply = await stub.GetStatus(
        lake_health_pb2.GetStatusRequest(), metadata=auth("token-admin"), timeout=10
    )
    figures: dict[str, Any] = json_format.MessageToDict(reply.status)
    return figures


async def served(addresses: Sequence[str], operation: str) -> list[int]:
    """How many calls of ``operation`` each instance has run, in order."""
    counts = []
    for address in addresses:
        async with pinned_channel(address) as channel:
            figures = await status(channel)
        counts.append(int(figures["operations"].get(operation, {}).get("calls", 0)))
    return counts


async def lake(*args: str) -> tuple[int, str, str]:
    """Run the ``lake`` command as an operator would; (exit code, out, err)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lake",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


class RecordingStream(StreamPeer):
    """The reference stream peer, also noting every event id it received
    (redeliveries included) and the tenant it came for."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[str, str]] = []

    async def Publish(
        self,
        request: peers_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> peers_pb2.PublishResponse:
        self.arrivals.extend((e.tenant, e.event_id) for e in request.events)
        return await super().Publish(request, context)

    def arrived(self, tenant: str) -> list[str]:
        """Every event id received for ``tenant``, in order, repeats included."""
        return [event for who, event in self.arrivals if who == tenant]


def cluster_env(
    servers: dict[str, Any], dsn: str, address: str, stream: str
) -> dict[str, str]:
    """The environment of one instance: the testing profile on the shared
    database and Redis, the stream peer, the tokens, JSON logs at INFO."""
    pg, rd = servers["postgres"], servers["redis"]
    tokens = ", ".join(
        f'"{hash_token(token)}" = {_toml(grant)}' for token, grant in TOKENS.items()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(
        LAKE_ENV="testing",
        LAKE_GRPC__ADDRESS=address,
        LAKE_GRPC__GRACE="10",
        LAKE_GRPC__DRAIN_S="1.0",
        LAKE_LOGGING__FORMAT="json",
        LAKE_LOGGING__LEVEL="INFO",
        LAKE_POSTGRES__DSN=dsn,
        LAKE_POSTGRES__PASSWORD=pg.password,
        LAKE_POSTGRES__MAX_SIZE="5",
        LAKE_REDIS__URL=rd.url,
        LAKE_REDIS__PASSWORD=rd.password,
        # A loaded 2-core machine stalls Redis now and then: a 100 ms bound would
        # fail quotas open (counted per instance) and blur exact counts.
        LAKE_REDIS__SOCKET_TIMEOUT="2.0",
        LAKE_MESH__PEERS=f'{{ stream = "{stream}" }}',
        LAKE_MESH__CALL_TIMEOUT="10",
        LAKE_AUTH__TOKENS=f"{{ {tokens} }}",
        LAKE_USAGE__FLUSH_INTERVAL="0.5",
        # Rates over a 60 s window: no budget refills while a test runs.
        LAKE_QUOTAS__WINDOW_S="60",
        LAKE_STARTUP__TIMEOUT="60",
        LAKE_STARTUP__ATTEMPT_TIMEOUT="45",
    )
    return env


def _toml(grant: Any) -> str:
    if isinstance(grant, str):
        return f'"{grant}"'
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in grant.items()) + " }"


@dataclass
class Instance:
    """One ``lake serve`` process on a fixed port; each start logs to a file of
    its own (``instance-<n>-start-<k>.log``)."""

    index: int
    address: str
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_files: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        path = self.logs / f"instance-{self.index}-start-{self.starts}.log"
        self.log_files.append(path)
        with path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lake", "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, within: float = 60.0) -> None:
        """Wait until the instance reports ``lake.ready`` SERVING."""
        async with pinned_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                assert self.proc is not None
                assert self.proc.poll() is None, self.log_text()
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service="lake.ready"), timeout=2
                    )
                except grpc.aio.AioRpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await eventually(serving, within=within, every=0.1)

    async def terminate(self, within: float = 60.0) -> int:
        """SIGTERM, then wait for the process to exit; its exit code."""
        assert self.proc is not None
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait, within)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def log_text(self, start: int = 0) -> str:
        """The log of one start (1-based), or of the latest."""
        path = self.log_files[start - 1 if start else -1]
        return path.read_text(errors="replace")

    def events(self, start: int = 1) -> list[dict[str, Any]]:
        """The JSON log lines of one start (other lines skipped)."""
        found = []
        for line in self.log_text(start).splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found
