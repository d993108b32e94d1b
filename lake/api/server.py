"""
The gRPC face: the standard health service, Lake's detailed health, and reflection.

One port serves Kubernetes probes (``grpc.health.v1``: ``""`` for liveness,
``lake.ready`` for readiness, ``lake.<component>`` per component), ``lake health`` and
the API of later issues. A background monitor keeps the standard statuses current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lake.api.admission import Admission
from lake.api.auth import Keyring
from lake.api.healthservice import HealthService
from lake.api.quotas import QuotaAdmin, QuotasServicer, no_quotas
from lake.api.reflection import enable_reflection
from lake.api.servicer import SpatialServicer, TimeSeriesServicer, VectorsServicer
from lake.api.tokens import TokensServicer
from lake.api.usage import UsageServicer
from lake.errors import ConfigError
from lake.health import HealthReport, Status
from lake.manager import ServiceManager
from lake.schema import listen_problem
from lake.tokens import TokenStore
from lake.v1 import health_pb2 as lake_health_pb2
from lake.v1 import health_pb2_grpc as lake_health_grpc
from lake.v1 import (
    lake_pb2,
    lake_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from lake.workerstatus import StatusBoard

__all__ = ["LakeServer", "report_to_proto"]

log = structlog.get_logger(__name__)

READY = "lake.ready"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_USAGE_SERVICE = usage_pb2.DESCRIPTOR.services_by_name["Usage"].full_name
_STATUS = {
    Status.UP: lake_health_pb2.STATUS_UP,
    Status.DEGRADED: lake_health_pb2.STATUS_DEGRADED,
    Status.DOWN: lake_health_pb2.STATUS_DOWN,
}


def report_to_proto(
    report: HealthReport, state: str
) -> lake_health_pb2.GetHealthResponse:
    """
    Convert a health report to its wire form.
    """
    return lake_health_pb2.GetHealthResponse(
        status=_STATUS[report.status],
        ready=report.ready,
        live=report.live,
        state=state,
        components=[
            lake_health_pb2.ComponentHealth(
                name=c.name,
                status=_STATUS[c.status],
                latency_ms=c.latency_ms,
                reason=c.reason,
                critical=c.critical,
            )
            for c in report.components
        ],
    )


class _LakeHealthServicer(lake_health_grpc.LakeHealthServicer):
    def __init__(
        self,
        manager: ServiceManager,
        admission: Admission,
        board: StatusBoard,
        usage: UsageServicer | None = None,
    ) -> None:
        self._manager = manager
        self._admission = admission
        self._board = board
        self._usage = usage

    async def report(self) -> dict[str, Any]:
        """
        This process's operator figures: the manager's and the admission budgets'.
        """
        report = (await self._manager.status()).as_dict()
        report["admission"] = self._admission.stats()
        if self._usage is not None:
            report["metering"] = self._usage.stats()
        return report

    async def GetHealth(
        self, request: lake_health_pb2.GetHealthRequest, context: Any
    ) -> lake_health_pb2.GetHealthResponse:
        report = await self._manager.health()
        return report_to_proto(report, self._manager.state.value)

    async def GetStatus(
        self, request: lake_health_pb2.GetStatusRequest, context: Any
    ) -> lake_health_pb2.GetStatusResponse:
        status = struct_pb2.Struct()
        # With several worker processes: their figures added up.
        report = self._board.gather(await self.report())
        status.update(json.loads(json.dumps(report, default=str)))
        return lake_health_pb2.GetStatusResponse(status=status)


class LakeServer:
    """
    A grpc.aio server bound to one address, with health kept current by a monitor.

    The container builds it with its interceptors (admission, auth, decode guard),
    the admission budgets they share and the keyring auth reads. Interceptors are
    required: a server given none authenticates nothing, so that must be said
    outright (tests of binding only).

    Args:
        manager: what the services call.
        address: host:port to listen on (port 0: any free port).
        admission: the per-class budgets; ``GetStatus`` reports them.
        keyring: the tokens auth accepts; ``serving()`` gives it the token table.
        interceptors: run on every call, in order (auth among them).
        credentials: TLS (see lake.tls) when given, else plaintext.
        interval: seconds between health refreshes.
        token_refresh: seconds between re-reads of the token table.
        usage: serves lake.v1.Usage when given.
        drain: seconds between reporting NOT_SERVING and refusing new calls on
            stop, while clients watching health move to other instances.
    """

    def __init__(
        self,
        manager: ServiceManager,
        *,
        address: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
        admission: Admission | None = None,
        keyring: Keyring | None = None,
        credentials: grpc.ServerCredentials | None = None,
        interval: float = 2.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        reflection_enabled: bool = True,
        max_connection_age: float = 300.0,
        max_streams_per_connection: int = 256,
        reuse_port: bool = False,
        stream_idle_timeout: float = 10.0,
        token_refresh: float = 2.0,
        status_board: StatusBoard | None = None,
        usage: UsageServicer | None = None,
        quotas: QuotaAdmin = no_quotas,
        drain: float = 0.0,
    ) -> None:
        self._manager = manager
        self._drain = drain
        self._address = address
        self._credentials = credentials
        self._interval = interval
        self.admission = admission or Admission(
            max_api_calls=256, max_open_streams=64, max_streams_per_peer=8
        )
        # Settings tokens now; the token table's once serving() is given its store.
        self.keyring = keyring or Keyring({})
        self._token_refresh = token_refresh
        self._token_watch: asyncio.Task[None] | None = None
        self._server = grpc.aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Clients reconnect now and then, so DNS round-robin rebalances.
                ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", 10_000),
                ("grpc.max_concurrent_streams", max_streams_per_connection),
                # A port another process holds is an error, not a shared port.
                ("grpc.so_reuseport", int(reuse_port)),
            ],
            # A backstop only: Admission holds each class to its own budget, so
            # this never refuses a probe.
            maximum_concurrent_rpcs=self.admission.backstop,
        )
        self.health = HealthService()
        self._monitor: asyncio.Task[None] | None = None
        self._names: set[str] = set()
        self.port = 0
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._status = _LakeHealthServicer(
            manager,
            self.admission,
            status_board or StatusBoard(directory="", index=0, count=1),
            usage,
        )
        lake_health_grpc.add_LakeHealthServicer_to_server(self._status, self._server)
        lake_pb2_grpc.add_VectorsServicer_to_server(
            VectorsServicer(manager), self._server
        )
        lake_pb2_grpc.add_TimeSeriesServicer_to_server(
            TimeSeriesServicer(manager, stream_idle_timeout=stream_idle_timeout),
            self._server,
        )
        lake_pb2_grpc.add_SpatialServicer_to_server(
            SpatialServicer(manager), self._server
        )
        tokens_pb2_grpc.add_TokensServicer_to_server(
            TokensServicer(self.keyring), self._server
        )
        if usage is not None:
            usage_pb2_grpc.add_UsageServicer_to_server(usage, self._server)
        quotas_pb2_grpc.add_QuotasServicer_to_server(
            QuotasServicer(quotas), self._server
        )
        if reflection_enabled:
            names = (
                *(s.full_name for s in lake_pb2.DESCRIPTOR.services_by_name.values()),
                lake_health_pb2.DESCRIPTOR.services_by_name["LakeHealth"].full_name,
                tokens_pb2.DESCRIPTOR.services_by_name["Tokens"].full_name,
                *(() if usage is None else (_USAGE_SERVICE,)),
                quotas_pb2.DESCRIPTOR.services_by_name["Quotas"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            )
            enable_reflection(names, self._server)

    async def status_report(self) -> dict[str, Any]:
        """
        This process's operator figures (what GetStatus answers for one process).
        """
        return await self._status.report()

    @property
    def address(self) -> str:
        """
        The address actually bound (the port resolved when 0 was asked for).
        """
        host = self._address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """
        Listen, reporting NOT_SERVING everywhere until ``serving()`` is called.
        """
        await self.health.set("", _NOT_SERVING)
        await self.health.set(READY, _NOT_SERVING)
        try:
            if self._credentials is not None:
                self.port = self._server.add_secure_port(
                    self._address, self._credentials
                )
            else:
                self.port = self._server.add_insecure_port(self._address)
        except RuntimeError:  # grpcio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            why = listen_problem(self._address) or "cannot be listened on"
            msg = f"grpc.address {self._address} {why}"
            raise ConfigError(msg)
        await self._server.start()
        log.info(
            "grpc_listening", address=self.address, tls=self._credentials is not None
        )

    async def serving(self, token_store: TokenStore | None = None) -> None:
        """
        Start-up is done: mark liveness SERVING and keep health current; with a
        ``token_store``, accept its tokens and re-read them every token_refresh.
        """
        if token_store is not None:
            self.keyring.store = token_store
            await self.keyring.refresh()
            self._token_watch = asyncio.create_task(
                self.keyring.watch(self._token_refresh), name="token-refresh"
            )
        else:
            self.keyring.pending = False  # no table: the settings are all there is
        await self.health.set("", _SERVING)
        await self.refresh()
        self._monitor = asyncio.create_task(self._watch(), name="health-monitor")

    async def refresh(self) -> HealthReport:
        """
        Run the checks once and publish them to the standard health service.
        """
        report = await self._manager.health()
        await self.health.set(READY, _SERVING if report.ready else _NOT_SERVING)
        for c in report.components:
            name = f"lake.{c.name}"
            self._names.add(name)
            await self.health.set(
                name, _NOT_SERVING if c.status == Status.DOWN else _SERVING
            )
        return report

    async def _watch(self) -> None:
        last: tuple[object, ...] | None = None
        while True:
            try:
                report = await self.refresh()
            except Exception:
                log.exception("health_monitor_failed")
            else:
                summary = tuple((c.name, c.status, c.reason) for c in report.components)
                if summary != last:
                    log.info(
                        "health_changed",
                        status=report.status.name,
                        ready=report.ready,
                        down=[
                            c.name for c in report.components if c.status == Status.DOWN
                        ],
                    )
                    last = summary
            await asyncio.sleep(self._interval)

    async def stop(self, grace: float | None) -> None:
        """
        Report NOT_SERVING, keep serving for the drain, end the health watches,
        refuse new calls, let in-flight calls finish within grace.

        grpcio's stop sends GOAWAY but cancels the calls already on their way
        that no handler took yet (the client sees CANCELLED, which no retry
        policy should retry): the drain lets clients that watch health stop
        sending first.
        """
        for task in (self._monitor, self._token_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._token_watch = None
        await self.health.enter_graceful_shutdown()
        if self._drain > 0:
            log.info("grpc_draining", seconds=self._drain)
            await asyncio.sleep(self._drain)
        await self.health.end_watches()
        await self._server.stop(grace)
        log.info("grpc_stopped")
