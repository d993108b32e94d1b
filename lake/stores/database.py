"""
Database: the stores' one door to PostgreSQL.

It acquires with a timeout, scopes every transaction to a tenant with
``set_config('app.tenant_id', ..., true)`` (transaction-local, so the pool's reset
cannot leak it), reports pool metrics, and translates driver errors into Lake errors
that carry no SQL, driver names or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from lake import deadline
from lake.errors import (
    AbortedError,
    CircuitOpenError,
    ConflictError,
    DeadlineExceededError,
    LakeError,
    ResourceExhaustedError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
)
from lake.metering import current_charge, timed_db
from lake.poolmetrics import PoolMetrics
from lake.protection import (
    BreakerState,
    Dependency,
    FairGate,
    Outcome,
    Protection,
    first_attempt,
)
from lake.stores.versions import VersionReader
from lake.tracing import child_span, end_span
from lake.validation import check_tenant

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = [
    "APP_ROLE",
    "Database",
    "ReadLane",
    "read_lane",
    "record_write",
    "translate_pg_error",
]

_PG_SPAN = {"db.system.name": "postgresql"}
# SQLSTATE classes that mean "the server cannot serve now", retry-safe.
_UNAVAILABLE = {"08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03"}
_UNAVAILABLE |= {"53300", "40001", "40P01", "25006"}


def translate_pg_error(exc: BaseException) -> LakeError:
    """
    Map a driver or network error to the Lake error that says what happened.

    The result's ``detail`` names the SQLSTATE and PostgreSQL's condition name for
    the operator's log line; neither reaches a client, and no SQL text, parameter
    value or driver name is kept.
    """
    if isinstance(exc, LakeError):
        return exc
    return _translated(exc).with_detail(_detail(exc))


def _detail(exc: BaseException) -> str:
    # PostgreSQL's own condition name (unique_violation), not the driver's class.
    state = getattr(exc, "sqlstate", None)
    if state:
        return f"sqlstate {state} ({_condition(type(exc).__name__)})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return "connection error" if isinstance(exc, OSError) else "client error"


def _condition(class_name: str) -> str:
    # asyncpg names its classes after PostgreSQL's conditions: UniqueViolationError.
    words = re.findall(r"[A-Z][a-z0-9]*", class_name.removesuffix("Error"))
    return "_".join(w.lower() for w in words) or "error"


def _translated(exc: BaseException) -> LakeError:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return StoreUnavailableError("database did not answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return StoreUnavailableError("database refused the connection")
    # InternalClientError: the driver's state after a connection died mid-call.
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return StoreUnavailableError("database connection failed")
    state = getattr(exc, "sqlstate", None) or ""
    if state in _UNAVAILABLE or state.startswith("08"):
        return StoreUnavailableError("database is unavailable")
    if state == "57014":
        return DeadlineExceededError("database statement timed out")
    if state == "55P03":  # lock_not_available: an operator's lock_timeout ran out
        return AbortedError("database gave up waiting for a lock")
    if state.startswith("28"):
        return StoreError("database rejected the credentials")
    if state == "3D000":
        return StoreError("database does not exist")
    if state.startswith("23"):
        return ConflictError("write conflicts with stored data")
    if state == "22003":  # numeric_value_out_of_range: a sum or average overflowed
        return ValidationError("request", "a number overflows what the database holds")
    if state.startswith("22"):
        return ValidationError(
            "request", "a value is out of the range the database accepts"
        )
    # Class 54 (program limit exceeded): an index row or a statement too large for
    # the server, which only the request's size can cause.
    if state.startswith("54"):
        return ValidationError("request", "too large for the database to store")
    return StoreError("database error")


def _read_only(exc: BaseException) -> bool:
    # read_only_sql_transaction: a write reached a node that takes none (a standby
    # after a failover, or a primary turned read-only).
    return getattr(exc, "sqlstate", None) == "25006"


# After a recycle, further read-only refusals (the other writes in flight on the
# old connections) within this many seconds recycle nothing more.
_RECYCLE_EVERY_S = 1.0

# Health's question: can this connection write? (A standby, or a primary set
# default_transaction_read_only, cannot.)
_CAN_WRITE = (
    "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)"
)


def _gave_up(metrics: PoolMetrics, exc: BaseException) -> None:
    # No connection in time (the pool's wait or the fair-share gate's) is an
    # acquire timeout; anything else ended the wait early.
    if isinstance(exc, ResourceExhaustedError):
        metrics.timed_out()
    else:
        metrics.abandoned()


def _outcome(exc: BaseException) -> Outcome:
    """
    What a failed call says about PostgreSQL itself, for its breaker.

    Only PostgreSQL's own failures count: refused, lost or unanswered connections,
    and calls cut by their attempt's own timeout. The caller giving up (its
    deadline, a cancel), an exhausted pool, and answers about the request
    (invalid, not found, conflicting, a statement timeout) say nothing about
    PostgreSQL's health and are ignored; so are other server errors, which one bad
    statement would cause on every call of its route and which retrying elsewhere
    does not cure.
    """
    if isinstance(exc, CircuitOpenError | ResourceExhaustedError):
        return Outcome.IGNORED
    if isinstance(exc, StoreUnavailableError):
        return Outcome.FAILURE
    if isinstance(exc, asyncio.CancelledError | TimeoutError):
        return Outcome.FAILURE if deadline.attempt_expired() else Outcome.IGNORED
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return Outcome.FAILURE
    if isinstance(exc, asyncpg.PostgresError) and isinstance(
        translate_pg_error(exc), StoreUnavailableError
    ):
        return Outcome.FAILURE
    return Outcome.IGNORED


# Tables the stores bulk-load, analyzed after big writes (see Database.wrote).
_ANALYZABLE = {name: name for name in ("features", "vector_items", "ts_data")}
_ANALYZE_MIN_ROWS = 1000
_ANALYZE_BACKOFF_S = 300.0

log = structlog.get_logger(__name__)

# The generations the current transaction changed (see record_write), so that the
# lease can hold this process's copy of them and the write can wait for the others.
_CHANGED: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "lake_changed_generations", default=None
)

_SETTING = re.compile(r"[a-z_][a-z0-9_.]{0,62}")
APP_ROLE = "lake_app"


def _literal(value: str) -> str:
    # Only for values checked above or produced by Lake: a quoted SQL literal.
    return "'" + value.replace("'", "''") + "'"


def _setup_sql(tenant: str | None, settings: Mapping[str, str], prelude: str) -> str:
    parts = ["BEGIN"]
    configs = []
    left = deadline.remaining()
    if left is not None:
        # The server stops working for a caller who has given up.
        ms = max(1, int(left * 1000))
        configs.append(f"set_config('statement_timeout', '{ms}', true)")
    if tenant is not None:
        check_tenant(tenant)  # again here: it becomes a SQL literal below
        # set_config('role', ..., true) is SET LOCAL ROLE, in the same statement.
        configs.append(f"set_config('role', '{APP_ROLE}', true)")
        configs.append(f"set_config('app.tenant_id', {_literal(tenant)}, true)")
    for name, value in settings.items():
        if not _SETTING.fullmatch(name):
            msg = f"bad setting name {name!r}"
            raise ValueError(msg)
        configs.append(f"set_config({_literal(name)}, {_literal(value)}, true)")
    if configs:
        parts.append("SELECT " + ", ".join(configs))
    if prelude:
        parts.append(prelude)
    return "; ".join(parts)


async def _rollback(conn: Any) -> None:
    # Best effort: after a lost connection even is_closed() can raise (the pool
    # detaches the proxy), and the original failure is what the caller must see.
    try:
        if conn.is_closed():
            return
        async with asyncio.timeout(2.0):
            await conn.execute("ROLLBACK")
    except Exception:
        with contextlib.suppress(Exception):
            conn.terminate()


async def record_write(
    conn: Any,
    tenant: str,
    scope: str,
    event: tuple[str, Mapping[str, Any]] | None = None,
) -> None:
    """
    Inside a write's transaction: invalidate cached reads of ``scope`` and, when
    ``event`` (kind, payload) is given, add it to the outbox. One round trip.
    """
    # A random new generation, not gen + 1: a database restored from a backup, or
    # another database, can then never reproduce a generation whose entries differ.
    bump = (
        "INSERT INTO cache_generations (tenant_id, scope, gen)"
        " VALUES ($1, $2, floor(random() * 9007199254740991)::bigint)"
        " ON CONFLICT (tenant_id, scope) DO UPDATE SET gen = EXCLUDED.gen"
    )
    changed = _CHANGED.get()
    if changed is not None:
        changed.append((tenant, scope))
    if event is None:
        await conn.execute(bump, tenant, scope)
        return
    kind, payload = event
    await conn.execute(
        "WITH recorded AS (INSERT INTO outbox (tenant_id, kind, payload)"  # noqa: S608 -- constant SQL
        " VALUES ($1, $3, $4::jsonb)) " + bump,
        tenant,
        scope,
        kind,
        json.dumps(dict(payload), separators=(",", ":"), default=str),
    )


class ReadLane(Protocol):
    """
    Where the transactions of one read run instead of this database's pool: a
    replica chosen for it (``lake.stores.replicas``).
    """

    def connection(self, tenant: str) -> AbstractAsyncContextManager[Any]:
        """
        A connection of the replica, through its own breaker.
        """

    def setup(self, sql: str) -> str:
        """
        The transaction's setup statement plus the replica's own check.
        """


# Set around a read sent to a replica; None (the default, and always without
# replicas): transactions run on the primary's pool.
read_lane: contextvars.ContextVar[ReadLane | None] = contextvars.ContextVar(
    "lake_read_lane", default=None
)


class Database:
    """
    Tenant-scoped transactions, health and metrics over an asyncpg pool.
    """

    def __init__(
        self,
        pool: Any,
        *,
        acquire_timeout: float = 2.0,
        versions: VersionReader | None = None,
        guard: Dependency | None = None,
        gate: FairGate | None = None,
        pool_metrics: PoolMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._pool = pool
        # A span per transaction and per version read, inside a trace (None: off).
        self._tracer = tracer
        # PostgreSQL's breaker and retry budget, and the pool's fair shares.
        self._guard = guard or Protection().postgres
        self._gate = gate
        self._versions = versions
        self._acquire_timeout = acquire_timeout
        # Waiters, waits and holds (asyncpg counts none of them): see poolmetrics.
        self._metrics = pool_metrics or PoolMetrics()
        self._metrics.watch(pool)
        self._namespace: str | None = None
        # Rows written per table since its last ANALYZE, and its size then.
        self._written: dict[str, int] = {}
        self._analyzed_rows: dict[str, float] = {}
        self._analyzing: dict[str, asyncio.Task[None]] = {}
        self._analyze_after: dict[str, float] = {}
        self._recycled_at = float("-inf")

    @asynccontextmanager
    async def connection(self, tenant: str = "") -> AsyncIterator[Any]:
        """
        Acquire a connection within the acquire timeout, through the breaker and
        ``tenant``'s fair share of the pool.

        Raises:
            CircuitOpenError: PostgreSQL's breaker is open (at once, no wait).
            ResourceExhaustedError: no connection in time, or none expected in time.
        """
        guard = self._guard
        ticket = guard.breaker.allow()
        if first_attempt():
            guard.budget.deposit()
        metrics = self._metrics
        waiting = metrics.acquiring()
        gate = self._gate
        started = gate_taken = time.perf_counter()
        if gate is not None:
            try:
                gate_taken = await gate.acquire(tenant)
            except BaseException as exc:
                _gave_up(metrics, exc)
                guard.breaker.record(ticket, Outcome.IGNORED, 0.0)
                raise
        try:
            conn = await self._acquire()
        except BaseException as exc:
            _gave_up(metrics, exc)
            if gate is not None:
                gate.release(tenant, gate_taken)
            guard.breaker.record(ticket, _outcome(exc), time.perf_counter() - started)
            raise
        held = metrics.acquired(waiting)
        outcome = Outcome.SUCCESS
        try:
            yield conn
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            metrics.released(held)
            try:
                await self._pool.release(conn)
            except Exception:  # a lost connection: the pool replaces it
                with contextlib.suppress(Exception):
                    conn.terminate()
            if gate is not None:
                gate.release(tenant, gate_taken)
            guard.breaker.record(ticket, outcome, time.perf_counter() - started)

    async def _acquire(self) -> Any:
        try:
            # asyncio.timeout, not acquire(timeout=): asyncpg's wait_for would start
            # a task for every acquire.
            async with asyncio.timeout(self._acquire_timeout):
                return await self._pool.acquire()
        except TimeoutError:
            if deadline.attempt_expired():
                raise  # the attempt's own timeout, not the pool's
            if not self._pool_full():
                # A slot was free but its connect got no answer in time (a silent
                # or overloaded server): the database is unavailable, not Lake busy.
                msg = "database did not answer in time"
                error = StoreUnavailableError(msg).with_detail("connect timeout")
                raise error from None
            msg = "no database connection free in time"
            raise ResourceExhaustedError(msg) from None
        except Exception as exc:
            raise translate_pg_error(exc) from None

    def _pool_full(self) -> bool:
        # Every connection of the pool is connected and lent out.
        try:
            in_use = self._pool.get_size() - self._pool.get_idle_size()
            return bool(in_use >= self._pool.get_max_size())
        except AttributeError:  # a pool without size figures: assume it is
            return True

    @timed_db  # usage metering: time inside transactions, charged to the call
    @asynccontextmanager
    async def transaction(
        self,
        tenant: str | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        prelude: str = "",
    ) -> AsyncIterator[Any]:
        """
        Run a transaction; with ``tenant``, as ``lake_app`` under row-level security.

        BEGIN, the role, the tenant, any ``settings`` (transaction-local, such as
        ``hnsw.ef_search``) and a constant ``prelude`` statement of the store's own
        (creating a staging table, say) go to the server in one round trip. On any
        failure the transaction is rolled back; a cancelled query's connection is
        discarded, so no state can reach the next user of the pool.
        """
        setup = _setup_sql(tenant, settings or {}, prelude)
        lane = read_lane.get()  # a read routed to a replica runs there
        if lane is not None:
            setup = lane.setup(setup)
        source = self if lane is None else lane
        # One span for the whole transaction, the connection's wait included (no
        # SQL text: the setup statement names the tenant and the settings).
        span = child_span(self._tracer, "pg transaction", _PG_SPAN)
        error: BaseException | None = None
        changed: list[tuple[str, str]] = []
        marker = _CHANGED.set(changed)
        try:
            async with source.connection(tenant or "") as conn:
                try:
                    await conn.execute(setup)
                    yield conn
                    await conn.execute("COMMIT")
                except asyncio.CancelledError:
                    conn.terminate()
                    raise
                except BaseException as exc:
                    await _rollback(conn)
                    if _read_only(exc) and lane is None:  # a replica always is
                        await self.recycle("read-only")
                    if isinstance(exc, Exception) and not isinstance(exc, LakeError):
                        raise translate_pg_error(exc) from None
                    raise
            if changed:
                await self._settle(changed)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _CHANGED.reset(marker)
            end_span(span, error)

    async def _settle(self, changed: list[tuple[str, str]]) -> None:
        # Committed, the connection given back: the other processes' leases on
        # these generations run out before the write is acknowledged (see
        # stores.lease); this process's copy of them waits for its next poll.
        reader = self._versions
        if reader is None:
            return
        reader.start_polling()  # a process that only writes counts its peers too
        reader.lease.wrote(changed)
        wait = reader.lease.write_wait()
        if wait > 0:
            started = time.perf_counter()
            await asyncio.sleep(wait)
            charge = current_charge()
            if charge is not None:  # waiting is not database time
                charge.db_s -= time.perf_counter() - started

    def leased_version(self, tenant: str, scope: str) -> str | None:
        """
        The cache version of ``scope`` from this process's lease, without a
        round trip; None when it must be read (``cache_version``).
        """
        reader = self._versions
        namespace = self._namespace
        if reader is None or namespace is None:
            return None
        gen = reader.lease.get((tenant, scope))
        return None if gen is None else f"{namespace}:{gen}"

    async def cache_version(self, tenant: str, scope: str) -> str:
        """
        This database's cache namespace and the current generation of ``scope``.

        Every write to the scope changes it in the write's own transaction, so a
        cache entry keyed on it can never outlive the data it was read from. Read
        in batches on a connection of its own (``stores.versions``), else from the
        pool.
        """
        if self._namespace is None:
            async with self.connection() as conn:
                try:
                    self._namespace = await conn.fetchval(
                        "SELECT value FROM lake_meta WHERE key = 'cache_namespace'"
                    )
                except Exception as exc:
                    raise translate_pg_error(exc) from None
        span = child_span(self._tracer, "pg cache version", _PG_SPAN)
        error: BaseException | None = None
        try:
            reader = self._versions
            if reader is not None and reader.usable:
                # A failed, stuck or closed reader: the pool answers instead.
                with contextlib.suppress(Exception):
                    gen = await reader.generation(tenant, scope)
                    return f"{self._namespace}:{gen}"
            async with self.connection() as conn:
                try:
                    # One round trip, no transaction: on every cached read.
                    gen = await conn.fetchval(
                        "SELECT gen FROM cache_generations"
                        " WHERE tenant_id = $1 AND scope = $2",
                        tenant,
                        scope,
                    )
                except Exception as exc:
                    raise translate_pg_error(exc) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            end_span(span, error)
        return f"{self._namespace}:{gen or 0}"

    def wrote(self, table: str, rows: int) -> None:
        """
        Note ``rows`` committed into ``table``; past a threshold, ANALYZE it soon.

        A table loaded in bulk has no planner statistics until autovacuum comes by
        (up to a minute or more): meanwhile the planner does not use its indexes. A
        freshly loaded features table answered nearest-10 by sorting every row
        (64 ms instead of 0.24 ms): "the miss path degrades" on a fresh ``lake
        serve``. So a table that took more than 1,000 rows and 10 % of its size
        since its last analysis is analyzed in the background, once at a time.
        """
        written = self._written.get(table, 0) + rows
        self._written[table] = written
        threshold = max(_ANALYZE_MIN_ROWS, 0.1 * self._analyzed_rows.get(table, 0.0))
        running = self._analyzing.get(table)
        if written < threshold or (running is not None and not running.done()):
            return
        if time.monotonic() < self._analyze_after.get(table, float("-inf")):
            return  # it failed lately: no ANALYZE (and pooled connection) per batch
        self._written[table] = 0
        # A context of its own: its log lines belong to no request or tenant.
        self._analyzing[table] = asyncio.create_task(
            self._analyze(table), name=f"analyze-{table}", context=contextvars.Context()
        )

    async def drain(self) -> None:
        """
        Cancel background analyses and wait for them, before the pool closes.
        """
        tasks = [t for t in self._analyzing.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._analyzing.clear()

    async def _analyze(self, table: str) -> None:
        try:
            async with self.connection() as conn:
                # The table name is one of the stores' own constants, never input.
                await conn.execute(f"ANALYZE {_ANALYZABLE[table]}")
                rows = await conn.fetchval(
                    "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", table
                )
        except Exception as exc:  # statistics are an optimisation: log, go on
            reason = str(exc) if isinstance(exc, LakeError) else "database error"
            log.warning("analyze_failed", table=table, reason=reason)
            self._analyze_after[table] = time.monotonic() + _ANALYZE_BACKOFF_S
            return
        self._analyzed_rows[table] = max(float(rows or 0.0), 0.0)
        log.info("table_analyzed", table=table, rows=int(self._analyzed_rows[table]))

    async def probe(self, *queries: str) -> list[object]:
        """
        Run health queries (constant SQL) on a connection of their own when there
        is one, else from the pool; their first column's value each.

        Health then measures the database, not the queue for pooled connections:
        200 callers on a pool of 4 made a healthy PostgreSQL look DOWN. Neither
        way goes through PostgreSQL's breaker or the fair-share gate.
        """
        reader = self._versions
        if reader is not None and reader.usable:
            with contextlib.suppress(Exception):  # the pool answers instead
                return [await reader.probe(q) for q in queries]
        # Straight from the pool: health asks PostgreSQL itself, whatever its
        # breaker says (an open breaker must not make a healthy server look
        # DOWN) and outside the tenants' fair shares.
        conn = await self._acquire()
        try:
            return [await conn.fetchval(q) for q in queries]
        except Exception as exc:
            raise translate_pg_error(exc) from None
        finally:
            try:
                await self._pool.release(conn)
            except Exception:  # a lost connection: the pool replaces it
                with contextlib.suppress(Exception):
                    conn.terminate()

    async def ping(self) -> str | None:
        """
        Prove the database answers and accepts writes.

        Returns None when healthy. Raises StoreUnavailableError on a read-only
        server (a standby, or a primary set read-only), after recycling the
        connections so that new ones find the primary (``recycle``).
        """
        (can_write,) = await self.probe(_CAN_WRITE)
        if not can_write:
            await self.recycle("read-only")
            msg = "connected to a read-only server"
            raise StoreUnavailableError(msg)
        state = self._guard.breaker.state
        if state is not BreakerState.CLOSED:
            return f"circuit {state.value.replace('_', '-')}"
        return None

    async def has_extension(self, name: str) -> bool:
        """
        Tell whether ``name`` is installed in the current database.
        """
        if not _SETTING.fullmatch(name):  # a constant of the stores, never input
            msg = f"bad extension name {name!r}"
            raise ValueError(msg)
        # A health query too: on the probe connection, driver errors translated.
        query = f"SELECT true FROM pg_extension WHERE extname = {_literal(name)}"  # noqa: S608 -- checked name
        (found,) = await self.probe(query)
        return bool(found)

    async def recycle(self, reason: str) -> None:
        """
        Replace every connection: the pool's (each in use is closed when it is
        released) and the version reader's, at most once a second.

        After a failover the pooled connections can stay on the old primary, now a
        standby or read-only, where every write fails (25006) while ``SELECT 1``
        still passes; new connections go through the DSN again, and with several
        hosts and ``target_session_attrs=read-write`` they find the primary. The
        version reader must move too: on a node that no longer gets the writes it
        would read old cache generations, so cached reads would go stale.
        """
        now = time.monotonic()
        if now - self._recycled_at < _RECYCLE_EVERY_S:
            return
        self._recycled_at = now
        log.warning("pg_connections_recycled", reason=reason)
        await self._pool.expire_connections()
        if self._versions is not None:
            self._versions.reconnect()

    async def refresh_connections(self) -> None:
        """
        Replace pooled connections, so that types created by migrations get codecs.
        """
        await self._pool.expire_connections()

    def version_stats(self) -> dict[str, int | float]:
        """
        Cache versions read from PostgreSQL and the queries that read them; the
        lease's figures (``stores.lease``).
        """
        return {} if self._versions is None else self._versions.stats()

    def metrics(self) -> dict[str, int | float]:
        """
        The pool's size, idle and in-use counts and bounds; the tasks waiting, the
        acquire timeouts, the connections created, and acquire and usage times
        (``PoolMetrics.figures``); the fair-share gate's refusals (``shed``).
        """
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        shed = {} if self._gate is None else {"shed": self._gate.rejected}
        return {
            **shed,
            "size": size,
            "idle": idle,
            "in_use": size - idle,
            "min_size": self._pool.get_min_size(),
            "max_size": self._pool.get_max_size(),
            **self._metrics.figures(),
        }
