"""
Cache versions read in batches on a connection of their own.

Every cached read needs the current generation of its scope (see ``stores.cache``).
Reading it from the pool cost each read an acquire and a round trip, and took pool
connections from the queries. Here one dedicated connection answers for everyone:
readers ask, and one query fetches the generations of every scope asked for since
the previous query was sent.

Read-your-writes, across instances too: a reader only accepts an answer from a query
*sent after it asked*. PostgreSQL gives that query a snapshot taken after the ask,
so every write acknowledged before the read began (its generation changed in its
own transaction) is seen. A reader that arrives while a query is in flight waits for
the next one; under load one round trip serves many readers.

With a lease (``stores.lease``) the same connection also polls for changed
generations, so that most reads need no round trip at all and writes wait instead.
(LISTEN/NOTIFY was considered for pushing the changes: a notifying commit takes a
database-wide lock held through its WAL flush, which serialises every writing
transaction of every tenant, and a pushed change still needs a fence to know that
nothing is in flight. The poll is that fence, and a cheap query.)

If the connection fails, readers fall back to the pool (the old path) and the
connection is opened again by a later read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog

from lake.errors import StoreUnavailableError
from lake.stores.fences import FenceBook
from lake.stores.lease import APP_NAME, Key, VersionLease

__all__ = ["VersionReader", "open_version_reader"]

log = structlog.get_logger(__name__)

_BATCH = (
    "SELECT k.t, k.s, coalesce(g.gen, 0)"
    " FROM unnest($1::text[], $2::text[]) AS k(t, s)"
    " LEFT JOIN cache_generations g ON g.tenant_id = k.t AND g.scope = k.s"
)
# With read replicas: the primary's WAL insert position too, read once in the same
# statement (after its snapshot was taken), for the replicas' fences.
_FENCED = (
    "SELECT k.t, k.s, coalesce(g.gen, 0),"
    " (SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint)"
    " FROM unnest($1::text[], $2::text[]) AS k(t, s)"
    " LEFT JOIN cache_generations g ON g.tenant_id = k.t AND g.scope = k.s"
)
# Every generation changed since the previous poll's snapshot xmin (none on the
# first poll, which only sets where the next one starts), and this one's xmin.
_POLL = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text,"
    " array_agg(tenant_id), array_agg(scope), array_agg(gen)"
    " FROM cache_generations WHERE changed >= $1::text::xid8"
)
# The other processes' version connections (their lease in their name), and
# whether this one is seen under its own name (not behind a connection pooler).
_PEERS = (
    "SELECT count(*),"
    " coalesce(max(substring(application_name from 'lease=([0-9]+)')::int), 0),"
    " current_setting('application_name') LIKE $1"
    " FROM pg_stat_activity"
    " WHERE application_name LIKE $1 AND datname = current_database()"
    " AND pid <> pg_backend_pid()"
)


class VersionReader:
    """
    Batches generation reads onto one connection.

    Args:
        connect: opens a new connection (the pool's DSN and settings).
        retry_after: seconds to wait before opening a failed connection again.
        lease: the reads' lease (``stores.lease``); none: every read asks.
        poll: seconds between polls while reads come (every second otherwise).
        fences: with read replicas, the book each batch's generations and WAL
            position go to (``stores.fences``).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        retry_after: float = 1.0,
        timeout: float = 1.0,
        lease: VersionLease | None = None,
        poll: float = 0.005,
        fences: FenceBook | None = None,
    ) -> None:
        self._connect = connect
        self._fences = fences
        self.lease = lease or VersionLease(0.0)
        self._poll_every = poll
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._retry_after = retry_after
        self._timeout = timeout
        self._conn: Any = None
        self._down_until = float("-inf")
        self._pending: dict[Key, None] = {}
        self._next: asyncio.Future[dict[Key, int]] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        # One query at a time on the connection: the batches and health probes.
        self._conn_lock = asyncio.Lock()
        self._peers_due = 0.0  # when the poller counts the peers next
        self.batches = 0
        self.reads = 0

    @property
    def usable(self) -> bool:
        """
        False while the connection is failed and not yet due to be opened again.
        """
        loop = asyncio.get_running_loop()
        return not self._closed and loop.time() >= self._down_until

    async def generation(self, tenant: str, scope: str) -> int:
        """
        The generation of ``scope`` as of a snapshot taken after this call.

        Raises:
            OSError, asyncpg errors: the connection failed (the caller falls back).
        """
        self.reads += 1
        self.start_polling()
        self._wake.set()  # a read that found no lease: poll at the fast pace
        self._pending[(tenant, scope)] = None
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        future = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="cache-versions")
        # Bounded twice over: a batch never outlives its timeout (see _run), and a
        # reader never waits past it even if the batch task itself is stuck.
        async with asyncio.timeout(self._timeout * 2):
            found = await asyncio.shield(future)
        return found[(tenant, scope)]

    def start_polling(self) -> None:
        """
        Poll (and count the peers) from now on, with a lease; idempotent.

        Started by the first read or write (the tables exist by then), not the
        first read alone: until the peers are counted a write must assume they
        hold leases, so a process that had not read yet (or only writes: an
        ingest) waited the whole lease after every write, alone on its database
        (ingest at 0.42 of COPY instead of 0.59).
        """
        if not self.lease.enabled or self._closed:
            return
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._keep_polling(), name="cache-poll")

    async def _run(self) -> None:
        while self._next is not None:
            future, keys = self._next, list(self._pending)
            self._next, self._pending = None, {}
            try:
                found = await self._query(keys)
            except BaseException as exc:
                failure = exc if isinstance(exc, Exception) else _closed()
                self._fail(failure)
                if not future.done():
                    future.set_exception(failure)
                    future.exception()  # readers re-raise it; nobody else needs to
                if not isinstance(exc, Exception):
                    raise
            else:
                future.set_result(found)

    async def _query(self, keys: list[Key]) -> dict[Key, int]:
        async with self._conn_lock:
            # Connecting is bounded by the connector's own timeout, not the
            # query's: over a slow link a reconnect alone can take longer than a
            # batch should (at 200 ms a round trip it never came back in 1 s).
            conn = await self._connection()
            baseline = self.lease.xmin is not None
            sent = time.monotonic()
            book = self._fences
            batch = 0 if book is None else book.begin_batch()
            # A silent network would otherwise hold this batch, and every cached
            # read behind it, until TCP gives up minutes later.
            async with asyncio.timeout(self._timeout):
                rows = await conn.fetch(
                    _BATCH if book is None else _FENCED,
                    [t for t, _ in keys],
                    [s for _, s in keys],
                )
        self.batches += 1
        found = {(r[0], r[1]): int(r[2]) for r in rows}
        self.lease.observed(sent, baseline, found)
        if book is not None and rows:
            book.record(batch, int(rows[0][3]), found)
        return found

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
            self.lease.connected()
            self._peers_due = 0.0
        return self._conn

    async def _keep_polling(self) -> None:
        # While reads come: a poll every `poll` seconds, the peers every second.
        # Idle: a poll a second, so a new burst of reads finds a recent baseline.
        lease = self.lease
        while not self._closed:
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail(exc)
                await asyncio.sleep(self._retry_after)
                continue
            active = time.monotonic() - lease.last_read < 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_every if active else 1.0):
                    await self._wake.wait()

    async def _poll_once(self) -> None:
        lease = self.lease
        async with self._conn_lock:
            conn = await self._connection()
            async with asyncio.timeout(self._timeout):
                sent = time.monotonic()
                xmin, tenants, scopes, gens = await conn.fetchrow(_POLL, lease.xmin)
                if sent >= self._peers_due:
                    self._peers_due = sent + 1.0
                    peers, longest, named = await conn.fetchrow(_PEERS, APP_NAME + "%")
                    lease.counted(int(peers), longest / 1000.0, blind=not named)
        rows = zip(tenants or (), scopes or (), gens or (), strict=True)
        lease.polled(sent, xmin, rows)

    async def probe(self, query: str) -> object:
        """
        One health query on this connection, not the work pool: a pool busy with
        200 callers must not make a healthy database look DOWN.

        Raises:
            TimeoutError, OSError, asyncpg errors: the probe failed (the reader is
                marked down, and the caller may fall back to the pool).
        """
        try:
            async with asyncio.timeout(self._timeout):
                async with self._conn_lock:
                    conn = await self._connection()
                    return await conn.fetchval(query)
        except Exception as exc:
            self._fail(exc)
            raise

    def reconnect(self) -> None:
        """
        Drop the connection (a query on it fails, and its readers fall back to
        the pool); the next read opens a new one through the DSN.
        """
        conn, self._conn = self._conn, None
        self.lease.lost()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    def _fail(self, exc: BaseException) -> None:
        reason = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
        log.warning("cache_versions_failed", reason=reason)
        self._down_until = asyncio.get_running_loop().time() + self._retry_after
        self.lease.lost()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def aclose(self) -> None:
        """
        Stop the batches and close the connection; idempotent.
        """
        self._closed = True
        self.lease.lost()
        for task in (self._runner, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._next is not None and not self._next.done():
            self._next.set_exception(_closed())  # readers fall back to the pool
            self._next.exception()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(2.0):
                    await conn.close()
            except (TimeoutError, OSError):
                conn.terminate()

    def stats(self) -> dict[str, int | float]:
        """
        Reads asked for and queries sent (reads per query = the batching gain),
        and the lease's figures.
        """
        return {"reads": self.reads, "batches": self.batches, **self.lease.stats()}


def _closed() -> StoreUnavailableError:
    return StoreUnavailableError("cache version reader closed")


@asynccontextmanager
async def open_version_reader(
    connect: Callable[[], Awaitable[Any]],
    *,
    lease: float = 0.0,
    poll: float = 0.005,
    blind: bool = False,
    fences: FenceBook | None = None,
) -> AsyncIterator[VersionReader]:
    """
    A version reader whose connection opens on first use and closes on exit;
    with a ``lease`` (seconds), reads answered from polled generations;
    ``blind``: the other processes' connections cannot be counted (a pooler);
    with ``fences``, its batches also feed the replicas' fences.
    """
    reader = VersionReader(
        connect,
        lease=VersionLease(lease, blind=blind),
        poll=poll,
        fences=fences,
    )
    try:
        yield reader
    finally:
        await reader.aclose()
