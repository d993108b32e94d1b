"""
A loopback TCP fault proxy of our own, between Lake and a real server.

``FaultProxy`` listens on 127.0.0.1:0 and forwards every connection to an upstream
``host:port`` (PostgreSQL, Redis, a gRPC peer). Faults are switched at run time, each
for one direction where it matters (``"up"``: client to upstream, ``"down"``:
upstream to client, or ``"both"``):

- ``latency(ms, jitter_ms)``: every chunk is held ``ms ± jitter_ms`` (order kept);
- ``bandwidth(bytes_per_s)``: chunks are paced to that rate;
- ``blackhole()``: connections stay open, nothing is forwarded (data waits in the
  proxy and in the kernel buffers; it flows again after ``clear()``);
- ``reset()``: every open connection is closed with an RST (SO_LINGER 0) on both sides;
- ``refuse()`` / ``accept()``: the listener is closed (new connections get
  ECONNREFUSED) and opened again on the same port;
- ``cut_after(n)``: the next ``n`` bytes go through, then that connection is reset
  (by default once, from the upstream's reply: a truncated result);
- ``disable()`` / ``enable()``: refuse and reset at once; then all clear and accepting.

It counts connections and bytes (``stats``). The async API runs in the test's own
loop (pytest-asyncio, an in-process Lake); ``ProxyThread`` runs one in a thread of
its own with the same controls as plain calls, for tests of a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

__all__ = ["Direction", "FaultProxy", "ProxyThread", "Stats"]

Direction = Literal["up", "down", "both"]
T = TypeVar("T")

_CHUNK = 65536
_QUEUE = 64  # chunks read ahead per direction before the reader waits (backpressure)


def _directions(direction: Direction) -> tuple[str, ...]:
    return ("up", "down") if direction == "both" else (direction,)


@dataclass
class _Faults:
    """What happens to the bytes flowing one way."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    rate: float = 0.0  # bytes per second; 0: no cap
    cut_budget: int | None = None  # bytes left before the connection is cut
    cut_once: bool = True
    cut_reset: bool = True  # cut with an RST; False: a FIN
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def delay(self) -> float:
        if not self.latency_s and not self.jitter_s:
            return 0.0
        spread = random.uniform(-self.jitter_s, self.jitter_s)
        return max(0.0, self.latency_s + spread)


@dataclass(frozen=True)
class Stats:
    """Counters since the proxy started."""

    connections: int = 0  # accepted
    open: int = 0  # open right now
    refused: int = 0  # accepted but the upstream refused them
    bytes_up: int = 0  # client to upstream (written upstream)
    bytes_down: int = 0  # upstream to client (written to the client)
    resets: int = 0  # connections reset by reset() or disable()
    cuts: int = 0  # connections cut by cut_after()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: SO_LINGER on, 0 s, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()


class _Link:
    """One proxied connection: a client socket and its upstream socket."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for direction, reader, writer in (
            ("up", self.client[0], self.upstream[1]),
            ("down", self.upstream[0], self.client[1]),
        ):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
            read = self._read(direction, reader, queue)
            write = self._write(direction, queue, writer)
            self.tasks += [asyncio.create_task(read), asyncio.create_task(write)]

    async def _read(
        self,
        direction: str,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        faults = self.proxy._faults[direction]
        last_due = 0.0
        try:
            while data := await reader.read(_CHUNK):
                # Latency per chunk, never reordering: a chunk leaves no earlier
                # than the one before it.
                last_due = max(last_due, time.monotonic() + faults.delay())
                await queue.put((last_due, data))
        except OSError:
            self.abort()  # a reset on one side resets the other
            return
        await queue.put((0.0, b""))  # end of stream

    async def _write(
        self,
        direction: str,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
    ) -> None:
        faults = self.proxy._faults[direction]
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await faults.gate.wait()  # a black hole holds everything here
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if faults.rate:
                    await asyncio.sleep(len(data) / faults.rate)
                await faults.gate.wait()
                if faults.cut_budget is not None and await self._write_then_cut(
                    direction, faults, data, writer
                ):
                    return
                writer.write(data)
                self.proxy._count(direction, len(data))
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            self.abort()

    async def _write_then_cut(
        self,
        direction: str,
        faults: _Faults,
        data: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Write what the cut budget allows; True once the connection is cut."""
        budget = faults.cut_budget or 0
        head = data[:budget]
        if head:
            writer.write(head)
            self.proxy._count(direction, len(head))
            await writer.drain()
        if len(data) < budget:
            faults.cut_budget = budget - len(data)
            return False
        faults.cut_budget = None if faults.cut_once else 0
        self.proxy._stats = replace(self.proxy._stats, cuts=self.proxy._stats.cuts + 1)
        if faults.cut_reset:
            # Let the kernel send what was written before the RST overtakes it.
            await asyncio.sleep(0.01)
            self.abort()
        else:  # a clean close (FIN) mid-reply, the upstream side reset
            _abort(self.upstream[1])
            self.client[1].close()
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
        return True

    def abort(self) -> None:
        """Reset both sides now."""
        _abort(self.client[1])
        _abort(self.upstream[1])
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def wait(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _, writer in (self.client, self.upstream):
            writer.close()


class FaultProxy:
    """
    A TCP proxy on 127.0.0.1 to ``upstream_host:upstream_port`` with switchable
    faults. Use as ``async with FaultProxy(host, port) as proxy:`` or
    ``await proxy.start()`` / ``await proxy.stop()``.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stats = Stats()
        self._faults: dict[str, _Faults] = {}

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` to give the client."""
        return f"{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        self._faults = {"up": _Faults(), "down": _Faults()}
        await self.accept()
        return self

    async def stop(self) -> None:
        """Close the listener and every connection (with an RST)."""
        await self.refuse()
        self.reset()
        # Handlers end once their links are reset (cancelling them would make
        # asyncio log the cancellation as an unhandled error).
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def stats(self) -> Stats:
        return replace(self._stats, open=len(self._links))

    # --- faults ----------------------------------------------------------------------

    def latency(
        self, ms: float, jitter_ms: float = 0.0, direction: Direction = "both"
    ) -> None:
        """Hold every chunk ``ms ± jitter_ms`` milliseconds (uniform jitter)."""
        for d in _directions(direction):
            self._faults[d].latency_s = ms / 1000
            self._faults[d].jitter_s = jitter_ms / 1000

    def bandwidth(self, bytes_per_s: float, direction: Direction = "both") -> None:
        """Pace the bytes to ``bytes_per_s`` per connection (0: no cap)."""
        for d in _directions(direction):
            self._faults[d].rate = bytes_per_s

    def blackhole(self, direction: Direction = "both") -> None:
        """Forward nothing; connections stay open and new ones are accepted."""
        for d in _directions(direction):
            self._faults[d].gate.clear()

    def cut_after(
        self,
        n: int,
        direction: Direction = "down",
        *,
        once: bool = True,
        reset: bool = True,
    ) -> None:
        """
        Forward the next ``n`` bytes, then cut the connection they went through:
        an RST both ways (``reset``), or a clean close (FIN) to the client. With
        ``once`` the fault is then over; otherwise every later chunk is cut too.
        """
        for d in _directions(direction):
            self._faults[d].cut_budget = n
            self._faults[d].cut_once = once
            self._faults[d].cut_reset = reset

    def clear(self) -> None:
        """No latency, no cap, no black hole, no cut (held data flows again)."""
        for faults in self._faults.values():
            faults.latency_s = faults.jitter_s = faults.rate = 0.0
            faults.cut_budget = None
            faults.gate.set()

    def reset(self) -> int:
        """Reset every open connection (RST both ways); how many there were."""
        links = list(self._links)
        for link in links:
            link.abort()
        self._stats = replace(self._stats, resets=self._stats.resets + len(links))
        return len(links)

    async def refuse(self) -> None:
        """Close the listener: new connections are refused; open ones stay."""
        # close() closes the listening socket at once; wait_closed() is not awaited
        # because on newer Pythons it waits for the open connections too.
        if self._server is not None:
            self._server.close()
            self._server = None

    async def accept(self) -> None:
        """Listen again (on the same port once it has one)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def disable(self) -> None:
        """Down: refuse new connections and reset the open ones."""
        await self.refuse()
        self.reset()

    async def enable(self) -> None:
        """Up and clean: every fault cleared, accepting again."""
        self.clear()
        await self.accept()

    # --- plumbing --------------------------------------------------------------------

    def _count(self, direction: str, n: int) -> None:
        key = "bytes_up" if direction == "up" else "bytes_down"
        self._stats = replace(self._stats, **{key: getattr(self._stats, key) + n})

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._stats = replace(self._stats, connections=self._stats.connections + 1)
        try:
            try:
                upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._stats = replace(self._stats, refused=self._stats.refused + 1)
                _abort(writer)
                return
            link = _Link(self, (reader, writer), upstream)
            self._links.add(link)
            try:
                link.start()
                await link.wait()
            finally:
                self._links.discard(link)
        finally:
            self._handlers.discard(task)


class ProxyThread:
    """
    A ``FaultProxy`` on an event loop of its own in a daemon thread, for tests whose
    client is another process (or another loop). Every control is a plain call::

        with ProxyThread("127.0.0.1", pg_port) as proxy:
            proxy.blackhole()
            ...
            proxy.clear()
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self.proxy = FaultProxy(upstream_host, upstream_port)

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._run(self.proxy.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self.proxy.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def _run(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self._loop)
        return future.result(10)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return fn(*args, **kwargs)

        return self._run(call())

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def stats(self) -> Stats:
        return self._call(lambda: self.proxy.stats)

    def latency(
        self, ms: float, jitter_ms: float = 0.0, direction: Direction = "both"
    ) -> None:
        self._call(self.proxy.latency, ms, jitter_ms, direction)

    def bandwidth(self, bytes_per_s: float, direction: Direction = "both") -> None:
        self._call(self.proxy.bandwidth, bytes_per_s, direction)

    def blackhole(self, direction: Direction = "both") -> None:
        self._call(self.proxy.blackhole, direction)

    def cut_after(
        self,
        n: int,
        direction: Direction = "down",
        *,
        once: bool = True,
        reset: bool = True,
    ) -> None:
        self._call(self.proxy.cut_after, n, direction, once=once, reset=reset)

    def clear(self) -> None:
        self._call(self.proxy.clear)

    def reset(self) -> int:
        return self._call(self.proxy.reset)

    def refuse(self) -> None:
        self._run(self.proxy.refuse())

    def accept(self) -> None:
        self._run(self.proxy.accept())

    def disable(self) -> None:
        self._run(self.proxy.disable())

    def enable(self) -> None:
        self._run(self.proxy.enable())
