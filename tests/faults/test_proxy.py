"""
The fault proxy itself, against a trivial echo server on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.faults.proxy import FaultProxy, ProxyThread
from tests.waiting import eventually


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await _echo(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    if handlers:  # they end when the proxy (stopped first) resets its links
        await asyncio.wait(handlers, timeout=5)


@pytest.fixture
async def proxy(echo: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo) as p:
        yield p


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def connect(proxy: FaultProxy) -> AsyncIterator[Callable[..., Awaitable[Conn]]]:
    """Open connections through the proxy (each once the proxy has linked it
    upstream); all closed after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def connect(*, linked: bool = True) -> Conn:
        before = proxy.stats.open
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writers.append(writer)
        if linked:
            await eventually(lambda: proxy.stats.open > before)
        return reader, writer

    yield connect
    for writer in writers:
        writer.close()


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_forwards_both_ways_and_counts(proxy, connect):
    """Bytes go through unchanged; connections and bytes are counted."""
    reader, writer = await connect()
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    payload = bytes(range(256)) * 1000
    assert await _roundtrip(reader, writer, payload) == payload
    stats = proxy.stats
    assert stats.connections == 1
    assert stats.open == 1
    assert stats.bytes_up == stats.bytes_down == 5 + len(payload)
    writer.close()
    await eventually(lambda: proxy.stats.open == 0)


async def test_latency_holds_each_way(proxy, connect):
    """100 ms each way: a round trip takes at least 200 ms."""
    reader, writer = await connect()
    proxy.latency(100, jitter_ms=10)
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"x") == b"x"
    assert time.monotonic() - started >= 0.18
    proxy.latency(100, direction="down")
    proxy.latency(0, direction="up")
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"y") == b"y"
    assert time.monotonic() - started >= 0.09


async def test_bandwidth_paces_the_bytes(proxy, connect):
    """20 kB at 100 kB/s one way takes at least 0.2 s."""
    reader, writer = await connect()
    proxy.bandwidth(100_000, direction="up")
    started = time.monotonic()
    for _ in range(10):  # several chunks, each paced
        assert await _roundtrip(reader, writer, b"z" * 2000) == b"z" * 2000
    assert time.monotonic() - started >= 0.18


async def test_blackhole_keeps_the_connection_and_delivers_after_clear(proxy, connect):
    """Nothing comes back while black-holed; the socket stays open; after clear()
    the held bytes arrive."""
    reader, writer = await connect()
    proxy.blackhole()
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.2)
    new_reader, new_writer = await connect()  # still accepted
    assert proxy.stats.open == 2
    proxy.clear()
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
    assert await _roundtrip(new_reader, new_writer, b"ok") == b"ok"


async def test_reset_sends_rst_to_open_connections(proxy, connect):
    """reset() ends every open connection with ECONNRESET; new ones still work."""
    reader, writer = await connect()
    assert await _roundtrip(reader, writer, b"a") == b"a"
    assert proxy.reset() == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(_roundtrip(reader, writer, b"b"), 2)
    reader2, writer2 = await connect()
    assert await _roundtrip(reader2, writer2, b"c") == b"c"
    assert proxy.stats.resets == 1


async def test_refuse_then_accept_on_the_same_port(proxy, connect):
    """refuse(): new connections are refused, the open one keeps working; accept():
    the same port listens again."""
    reader, writer = await connect()
    port = proxy.port
    await proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await connect(linked=False)
    assert await _roundtrip(reader, writer, b"still") == b"still"
    await proxy.accept()
    assert proxy.port == port
    reader2, writer2 = await connect()
    assert await _roundtrip(reader2, writer2, b"again") == b"again"


async def test_disable_refuses_and_resets_enable_restores(proxy, connect):
    reader, writer = await connect()
    proxy.latency(50)
    await proxy.disable()
    with pytest.raises(ConnectionRefusedError):
        await connect(linked=False)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(_roundtrip(reader, writer, b"b"), 2)
    await proxy.enable()
    reader2, writer2 = await connect()
    started = time.monotonic()
    assert await _roundtrip(reader2, writer2, b"c") == b"c"
    assert time.monotonic() - started < 0.05 * 2  # latency cleared


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What arrives before the connection ends (EOF or RST; not a timeout)."""
    received = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(100), 2):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize("reset", [True, False])
async def test_cut_after_forwards_n_bytes_of_the_reply_then_cuts(proxy, connect, reset):
    """Ten bytes of a 100-byte reply arrive, then the connection ends; the fault
    is over for the next connection."""
    reader, writer = await connect()
    proxy.cut_after(10, reset=reset)
    writer.write(b"r" * 100)
    await writer.drain()
    received = await _read_until_closed(reader)
    assert len(received) <= 10
    assert proxy.stats.cuts == 1
    reader2, writer2 = await connect()
    assert await _roundtrip(reader2, writer2, b"w" * 100) == b"w" * 100


async def test_upstream_down_resets_the_client(echo):
    """A proxy whose upstream refuses resets the client and counts it."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(_roundtrip(reader, writer, b"x"), 2)
        writer.close()
        assert proxy.stats.refused == 1


async def test_thread_proxy_for_other_loops(echo):
    """ProxyThread runs in a thread of its own: blocking controls, same faults."""
    with ProxyThread("127.0.0.1", echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"t") == b"t"
        proxy.blackhole()
        writer.write(b"u")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.2)
        proxy.clear()
        assert await asyncio.wait_for(reader.readexactly(1), 2) == b"u"
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.accept()
        assert proxy.reset() == 1
        stats = proxy.stats
        assert stats.connections == 1
        assert stats.bytes_down == 2
        writer.close()
