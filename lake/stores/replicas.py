"""
Read replicas: searches, queries and aggregates run on a streaming standby that
has replayed every write they must see; writes, and reads a replica cannot serve
fresh, run on the primary.

::

    RoutedReads.read(tenant, scope, ...) ── CachedReads (a hit: no load, no routing)
      └ load on a miss ─ fence of the scope (FenceBook, fed by the version batches)
                       ─ ReplicaSet.choose(fence): in rotation, replayed >= fence,
                         breaker closed; else the primary
                       ─ Replica.serve: read_lane set, the store's transactions run
                         on the replica's pool, the setup statement re-checks the
                         replayed position on the server; any failure: the primary

Correctness rests on WAL positions, never on clocks: a read goes to a replica only
if the replica has replayed past its fence (``stores.fences``), and the replica
checks that again inside the read's own transaction, so a replica that restarted
(its replay position went back) or was promoted since the last check refuses the
read and it runs on the primary. The lag in seconds is for operators and for
taking a replica out of rotation: ``LagClock`` samples the primary's WAL insert
position with Lake's monotonic clock every check; a replica's lag is how long ago
the primary was at the position the replica has replayed (interpolated between
samples), 0 once it has replayed the newest sample. It needs no clock shared
between machines and stays 0 while the primary is idle, where
``now() - pg_last_xact_replay_timestamp()`` grows without bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import structlog

from lake import deadline
from lake.codec import Codec
from lake.errors import LakeError, StoreUnavailableError, ValidationError
from lake.ports import Reads
from lake.protection import BreakerState, Dependency
from lake.stores.database import Database, read_lane
from lake.stores.fences import FenceBook, lsn_text

__all__ = [
    "LagClock",
    "Replica",
    "ReplicaSet",
    "RoutedReads",
    "fence_check",
    "routed_reads",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

_POLL = "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
_POSITION = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
# A replica read may use at most this share of the caller's remaining time, so a
# replica that stops answering leaves the primary the rest.
_REPLICA_SHARE = 0.5
_NO_DEADLINE_S = 5.0
_LOG_EVERY_S = 30.0


def fence_check(fence: int) -> str:
    """
    A statement that fails (division_by_zero, 22012) unless this server is a
    standby that has replayed past ``fence``; constant SQL around Lake's own int.
    """
    return (
        "SELECT 1 / coalesce(pg_is_in_recovery() AND"
        f" pg_last_wal_replay_lsn() - '0/0'::pg_lsn >= {int(fence)}, false)::int"
    )


class LagClock:
    """
    The primary's WAL position over time (Lake's monotonic clock).

    Args:
        keep_s: how long samples are kept; a replica further behind than that is
            reported as at least that far behind.
    """

    def __init__(self, *, keep_s: float = 60.0) -> None:
        self._keep_s = keep_s
        self._samples: list[tuple[float, int]] = []

    def add(self, at: float, position: int) -> None:
        """
        The primary was at ``position`` at ``at``.
        """
        samples = self._samples
        if samples and position < samples[-1][1]:
            samples.clear()  # another primary (a failover): start again
        samples.append((at, position))
        horizon = at - self._keep_s
        drop = 0
        while drop < len(samples) - 2 and samples[drop][0] < horizon:
            drop += 1
        del samples[:drop]

    def lag(self, replayed: int, at: float) -> float | None:
        """
        How far behind, at ``at``, a replica that has replayed ``replayed`` is: how
        long ago the primary was at that position (None: no sample yet).
        """
        samples = self._samples
        if not samples:
            return None
        if replayed >= samples[-1][1]:
            return 0.0
        i = bisect.bisect_right(samples, replayed, key=lambda s: s[1])
        if i == 0:
            return max(0.0, at - samples[0][0])  # at least this far behind
        (t0, p0), (t1, p1) = samples[i - 1], samples[i]
        caught_up = t0 + (t1 - t0) * (replayed - p0) / (p1 - p0)
        return max(0.0, at - caught_up)


class _Lane:
    # One read's way to a replica (database.ReadLane): its pool and its fence.
    __slots__ = ("_database", "_fence")

    def __init__(self, database: Database, fence: int) -> None:
        self._database = database
        self._fence = fence

    def connection(self, tenant: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._database.connection(tenant)

    def setup(self, sql: str) -> str:
        return f"{sql}; {fence_check(self._fence)}"


class Replica:
    """
    One read replica: its pool (a ``Database`` with the replica's own breaker),
    a connection of its own for the checks, and what the last check found.

    Args:
        name: ``1``, ``2``... in the order of ``postgres.replica_dsns``.
        host: ``host:port`` for operators (never the DSN: it may hold a password).
        connect: opens the check connection.
    """

    def __init__(
        self,
        name: str,
        host: str,
        database: Database,
        guard: Dependency,
        connect: Callable[[], Awaitable[Any]],
    ) -> None:
        self.name = name
        self.host = host
        self.database = database
        self.guard = guard
        self._connect = connect
        self._conn: Any = None
        self.in_rotation = False
        self.state = "starting"
        self.reason = "not checked yet"
        self.replayed = -1  # WAL position replayed at the last check
        self.lag_s: float | None = None
        self.reads = 0
        self.fallbacks = 0
        self._logged = float("-inf")

    async def poll(self) -> tuple[bool, int]:
        """
        Whether it is in recovery and the WAL position it has replayed (the
        caller bounds the time).

        Raises:
            OSError, asyncpg errors: it did not answer.
        """
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            row = await self._conn.fetchrow(_POLL)
        except BaseException:
            self.drop()
            raise
        return bool(row[0]), int(row[1] if row[1] is not None else -1)

    def drop(self) -> None:
        """
        Forget the check connection (the next check opens another).
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def serve(self, fence: int, load: Callable[[], Awaitable[T]]) -> T:
        """
        Run ``load`` with its transactions on this replica, within half the
        caller's remaining time.
        """
        left = deadline.remaining()
        budget = _NO_DEADLINE_S if left is None else left * _REPLICA_SHARE
        token = read_lane.set(_Lane(self.database, fence))
        try:
            async with asyncio.timeout(budget):
                with deadline.attempt_scope(budget):
                    value = await load()
        finally:
            read_lane.reset(token)
        self.reads += 1
        return value

    def failed(self, exc: Exception) -> None:
        """
        Note a read that failed here (it runs on the primary instead).
        """
        self.fallbacks += 1
        if isinstance(exc, ValidationError) and "22012" in exc.detail:
            # It had not replayed the fence after all: restarted, or promoted
            # since the last check. Not chosen again until the next check.
            self.replayed = -1
            reason = "had not replayed the read's fence"
        elif isinstance(exc, LakeError):
            reason = str(exc)
        else:
            reason = "timed out" if isinstance(exc, TimeoutError) else "failed"
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            log.warning(
                "replica_read_failed",
                replica=self.name,
                host=self.host,
                reason=reason,
                detail=getattr(exc, "detail", ""),
                fallbacks=self.fallbacks,
            )

    def stats(self) -> dict[str, Any]:
        """
        State, lag, reads served and fallen back, the pool and the breaker.
        """
        pool = self.database.metrics()
        return {
            "host": self.host,
            "state": self.state,
            "in_rotation": int(self.in_rotation),
            "reason": self.reason,
            "lag_ms": None if self.lag_s is None else round(self.lag_s * 1000, 1),
            "replayed": lsn_text(self.replayed) if self.replayed >= 0 else "",
            "reads": self.reads,
            "fallbacks": self.fallbacks,
            "breaker": self.guard.breaker.state.value,
            "pool": {k: pool[k] for k in ("size", "idle", "in_use", "max_size")},
        }


class ReplicaSet:
    """
    The read replicas, checked every ``interval`` seconds: each is in rotation
    while it answers, is a standby and is at most ``max_lag`` seconds behind; out
    of rotation, it comes back once at most ``max_lag / 2`` behind.

    Args:
        primary: opens a connection to the primary, for the WAL position samples.
        timeout: bound on each check query.
    """

    def __init__(
        self,
        replicas: list[Replica],
        *,
        primary: Callable[[], Awaitable[Any]],
        max_lag: float = 1.0,
        interval: float = 0.2,
        timeout: float = 1.0,
    ) -> None:
        self.replicas = replicas
        self._by_name = {r.name: r for r in replicas}
        self._primary = primary
        self._primary_conn: Any = None
        self._max_lag = max_lag
        self._interval = interval
        self._timeout = timeout
        self.clock = LagClock(keep_s=max(60.0, 10 * max_lag))
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        # Where reads went: a replica, or the primary and why.
        self.routed = {"replica": 0, "recent_write": 0, "no_replica": 0, "fallback": 0}

    @property
    def names(self) -> list[str]:
        """
        The replicas' names, in the settings' order.
        """
        return [r.name for r in self.replicas]

    def choose(self, fence: int) -> Replica | None:
        """
        The next replica (round robin) in rotation, its breaker not refusing, that
        has replayed past ``fence``; None: the read goes to the primary.
        """
        replicas, n = self.replicas, len(self.replicas)
        usable = False
        for i in range(n):
            replica = replicas[(self._next + i) % n]
            if not replica.in_rotation or replica.guard.breaker.refusing():
                continue
            usable = True
            if replica.replayed >= fence:
                self._next = (self._next + i + 1) % n
                self.routed["replica"] += 1
                return replica
        self.routed["recent_write" if usable else "no_replica"] += 1
        return None

    async def start(self) -> None:
        """
        Check once (replicas that answer in time join at once), then every
        ``interval`` seconds in the background.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                await self.check()
        self._task = asyncio.create_task(self._run(), name="replica-checks")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:  # a bug here must not stop the checks
                log.exception("replica_check_failed")

    async def check(self) -> None:
        """
        One round: the primary's position and every replica's, concurrently.
        """
        sampled = asyncio.ensure_future(self._sample())
        seen = await asyncio.gather(*(self._observe(r) for r in self.replicas))
        fresh = await sampled
        for replica, observed in zip(self.replicas, seen, strict=True):
            self._judge(replica, observed, fresh)

    async def _sample(self) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                if self._primary_conn is None or self._primary_conn.is_closed():
                    self._primary_conn = await self._primary()
                position = await self._primary_conn.fetchval(_POSITION)
        except Exception:
            conn, self._primary_conn = self._primary_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
            return False  # the lag stays unknown this round
        self.clock.add((started + time.monotonic()) / 2, int(position))
        return True

    async def _observe(self, replica: Replica) -> tuple[float, bool, int] | str:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                standby, replayed = await replica.poll()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:
            return "connection refused" if _refused(exc) else "connection failed"
        return (started + time.monotonic()) / 2, standby, replayed

    def _judge(
        self, replica: Replica, observed: tuple[float, bool, int] | str, fresh: bool
    ) -> None:
        if isinstance(observed, str):
            replica.lag_s = None
            self._out(replica, "down", observed)
            return
        at, standby, replayed = observed
        if not standby:
            self._out(replica, "not a standby", "not in recovery (promoted?)")
            return
        replica.replayed = replayed
        lag = self.clock.lag(replayed, at) if fresh else None
        if lag is None:
            return  # no primary position this round: the rotation stays as it is
        replica.lag_s = lag
        limit = self._max_lag
        if lag > limit:
            self._out(replica, "lagging", f"{lag:.1f} s behind (max {limit:g} s)")
        elif replica.in_rotation or lag <= limit / 2:
            self._in(replica)
        else:
            replica.reason = f"catching up, {lag:.1f} s behind"

    def _out(self, replica: Replica, state: str, reason: str) -> None:
        was_in, replica.in_rotation = replica.in_rotation, False
        changed = was_in or replica.state != state
        replica.state, replica.reason = state, reason
        if changed:
            log.warning(
                "replica_out",
                replica=replica.name,
                host=replica.host,
                state=state,
                reason=reason,
            )

    def _in(self, replica: Replica) -> None:
        if not replica.in_rotation:
            log.info(
                "replica_in",
                replica=replica.name,
                host=replica.host,
                lag_ms=round((replica.lag_s or 0.0) * 1000, 1),
            )
        replica.in_rotation, replica.state, replica.reason = True, "in", ""

    async def ping(self, name: str) -> str | None:
        """
        Health of replica ``name`` as of the last check: raises while it is down,
        a reason while out of rotation or its breaker is not closed.
        """
        replica = self._by_name[name]
        if replica.state in ("down", "starting"):
            msg = f"replica {replica.reason}"
            raise StoreUnavailableError(msg)
        if not replica.in_rotation:
            return f"out of rotation: {replica.reason}"
        state = replica.guard.breaker.state
        if state is not BreakerState.CLOSED:
            return f"circuit {state.value.replace('_', '-')}"
        return None

    def lag_ms(self, name: str) -> float:
        """
        The measured lag of replica ``name`` (0 while unknown).
        """
        lag = self._by_name[name].lag_s
        return 0.0 if lag is None else lag * 1000.0

    def stats(self) -> dict[str, Any]:
        """
        Where reads went, and each replica's figures.
        """
        return {
            "routed": dict(self.routed),
            "nodes": {r.name: r.stats() for r in self.replicas},
        }

    async def aclose(self) -> None:
        """
        Stop the checks and close their connections; idempotent.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for replica in self.replicas:
            replica.drop()
        conn, self._primary_conn = self._primary_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionRefusedError)


class VersionSource(Protocol):
    """
    What the router needs of the primary: a scope's version, read in a batch
    sent after the call (which feeds the fence book).
    """

    async def cache_version(self, tenant: str, scope: str) -> str:
        """
        The cache version of ``scope``.
        """


class RoutedReads:
    """
    The read cache with its loads routed: a miss (or a read the cache skips)
    runs on a replica that has replayed past the read's fence, else the primary.
    """

    def __init__(
        self,
        reads: Reads,
        primary: VersionSource,
        replicas: ReplicaSet,
        fences: FenceBook,
    ) -> None:
        self._reads = reads
        self._primary = primary
        self._replicas = replicas
        self._fences = fences

    def peek(self, tenant: str, scope: str, operation: object) -> object:
        """
        ``operation``'s answer held in process (nothing is loaded, so nothing is
        routed), or ``MISS``.
        """
        return self._reads.peek(tenant, scope, operation)

    async def read(
        self,
        tenant: str,
        scope: str,
        operation: object,
        load: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> T:
        """
        ``operation``'s answer, cached as ``Reads.read`` does; loaded where it
        sees every write acknowledged before this call.
        """
        # Before the cache's version read: a batch after this mark saw every write
        # acknowledged before the read began, on any instance.
        routed = partial(self._load, tenant, scope, self._fences.mark(), load)
        return await self._reads.read(tenant, scope, operation, routed, codec)

    async def uncached(
        self, tenant: str, scope: str, load: Callable[[], Awaitable[T]]
    ) -> T:
        """
        ``load()``'s answer, loaded where it sees every write acknowledged before
        this call (not cached).
        """
        return await self._load(tenant, scope, self._fences.mark(), load)

    async def _load(
        self, tenant: str, scope: str, mark: int, load: Callable[[], Awaitable[T]]
    ) -> T:
        fence = self._fences.fence(tenant, scope, mark)
        if fence is None:
            # No batch since the read began has read this scope (the cache skipped
            # it, or missed without one): one batched read on the primary.
            with contextlib.suppress(LakeError):  # the primary decides then
                await self._primary.cache_version(tenant, scope)
            fence = self._fences.fence(tenant, scope, mark)
        if fence is None:  # the version reader is down: the primary serves
            self._replicas.routed["no_replica"] += 1
            return await load()
        replica = self._replicas.choose(fence)
        if replica is None:
            return await load()
        try:
            return await replica.serve(fence, load)
        except Exception as exc:  # never the caller's failure: the primary serves
            replica.failed(exc)
        self._replicas.routed["fallback"] += 1
        return await load()


def routed_reads(
    reads: Reads,
    primary: VersionSource,
    replicas: ReplicaSet | None,
    fences: FenceBook,
) -> Reads:
    """
    ``reads`` itself without replicas (nothing added to the read path), else
    ``RoutedReads`` over it.
    """
    if replicas is None:
        return reads
    return RoutedReads(reads, primary, replicas, fences)
