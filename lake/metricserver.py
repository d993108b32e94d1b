"""
``GET /metrics`` over plain HTTP, served on Lake's own event loop.

prometheus-client's ``start_http_server`` answers from a thread, which would read
the components' figures while the loop changes them and could not await the event
backlog query. This server is a few lines of asyncio instead: one request per
connection, a bounded request head, a time box on reading it, the body from
``MetricsRegistry.exposition()`` (gzip when the scraper accepts it, as
prometheus-client's own server does). A scrape every 15 s costs the loop about a
millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip

import structlog

from lake.errors import ConfigError
from lake.metrics import MetricsRegistry
from lake.schema import listen_problem, split_host_port

__all__ = ["MetricsServer"]

log = structlog.get_logger(__name__)

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT_S = 5.0
_PATHS = {"/metrics", "/"}


class MetricsServer:
    """
    Serves ``registry`` at ``http://address/metrics``; an empty address serves
    nothing.

    Args:
        registry: the families to render.
        address: ``host:port`` to listen on (port 0: any free port).
    """

    def __init__(self, registry: MetricsRegistry, *, address: str = "") -> None:
        self._registry = registry
        self._address = address
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """
        The address listened on (the bound port when 0 was asked), or "".
        """
        if self._server is None or not self._server.sockets:
            return ""
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        """
        Listen, unless the address is empty or already listening.

        Raises:
            ConfigError: the address cannot be listened on (naming why).
        """
        if not self._address or self._server is not None:
            return
        host, port = split_host_port(self._address)
        try:
            self._server = await asyncio.start_server(
                self._handle, host, port, limit=_MAX_HEAD, reuse_address=True
            )
        except OSError:
            why = listen_problem(self._address) or "cannot be listened on"
            msg = f"metrics.address {self._address} {why}"
            raise ConfigError(msg) from None
        log.info("metrics_listening", address=self.address)

    async def stop(self) -> None:
        """
        Stop listening; idempotent.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            await self._answer(head.decode("latin-1"), writer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, cut or oversized request gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _answer(self, head: str, writer: asyncio.StreamWriter) -> None:
        request, _, rest = head.partition("\r\n")
        parts = request.split(" ")
        headers = _headers(rest)
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            _respond(writer, "405 Method Not Allowed", b"GET /metrics\n", "text/plain")
        elif parts[1].partition("?")[0] not in _PATHS:
            _respond(writer, "404 Not Found", b"see /metrics\n", "text/plain")
        else:
            body, content_type = await self._registry.exposition(
                headers.get("accept", "")
            )
            extra = {}
            if "gzip" in headers.get("accept-encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            if parts[0] == "HEAD":
                body = b""
            _respond(writer, "200 OK", body, content_type, extra)
        await writer.drain()


def _headers(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def _respond(
    writer: asyncio.StreamWriter,
    status: str,
    body: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
) -> None:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
