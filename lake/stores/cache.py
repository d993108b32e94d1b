"""
Read cache over Redis: read-through, one load per key, a failure is only a miss.

Correctness does not rest on Redis: each entry carries the version (a per-database
namespace and the generation PostgreSQL changes in every write's own transaction,
``cache_generations``) it was loaded at, and a read only accepts an entry of the
current version; once a write is acknowledged no reader can accept an older answer.
Redis being down, slow or silent costs at most one ``timeout`` per call until its
circuit breaker opens (``lake.protection``); while it is open the cache is skipped
outright, costing nothing. Errors are counted and logged once per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

from lake.codec import Codec, cache_key
from lake.errors import CircuitOpenError, StoreUnavailableError
from lake.lag import LoopLag
from lake.ports import MISS, Cache, Database
from lake.protection import BreakerState, CircuitBreaker, Outcome, Protection
from lake.resources.redis import RedisClient, cluster_connections
from lake.tracing import child_span, end_span

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["MISS", "CachedReads", "RedisCache", "RoutePolicy", "redis_connections"]

T = TypeVar("T")
log = structlog.get_logger(__name__)
_RETRY = object()  # the loading caller was cancelled: waiters load for themselves


_REDIS_SPAN = {"db.system.name": "redis"}
# Entries larger than this are not kept in process (4096 x 64 KiB bounds the LRU).
_NEAR_MAX_ENTRY = 64 * 1024


def _pool_busy(exc: BaseException) -> bool:
    # What redis-py's BlockingConnectionPool raises when its wait runs out, and a
    # cluster node's pool when full (it does not wait).
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(
        exc, aioredis.ConnectionError
    ) and "No connection available" in str(exc)


def redis_connections(client: Any) -> dict[str, int]:
    """
    The client's pooled connections: in use, available (idle in the pool) and the
    most the pool opens. redis-py counts them in its pool's own collections (its
    8.x ``get_connection_count()`` builds telemetry attributes on every call).
    """
    if isinstance(client, RedisCluster):  # a pool per node: their sums
        return cluster_connections(client)
    pool = getattr(client, "connection_pool", None)
    in_use = getattr(pool, "_in_use_connections", ())
    available = getattr(pool, "_available_connections", ())
    return {
        "in_use": len(in_use),
        "available": len(available),
        "max": int(getattr(pool, "max_connections", 0) or 0),
    }


@dataclass(slots=True)
class RoutePolicy:
    """
    Whether caching one kind of read pays, from what it costs and how often it hits.

    With ``h`` the hit ratio, ``L`` what a lookup costs (Redis GET beside the
    version read) and ``C`` what a load costs, caching saves ``h*C`` and spends
    ``L`` on every call plus a write-back (about ``L``) on every miss: it pays while
    ``h*C > L*(2-h)``. Averages move with every call (EWMA); a route that does not
    pay is served straight from its store, and every ``probe_every``-th call still
    goes through the cache so that a route that starts to repeat itself is noticed.
    """

    hit: float = 1.0
    lookup_us: float = 0.0
    load_us: float = 0.0
    calls: int = 0
    loads: int = 0
    bypassed: int = 0
    alpha: float = 0.05
    probe_alpha: float = 0.3
    warmup: int = 64
    probe_every: int = 16

    def pays(self) -> bool:
        """
        True while caching this route saves more than it costs (or is unmeasured).
        """
        if self.calls < self.warmup or self.loads < self.warmup // 4:
            return True  # not measured yet (a route that always hits never loads)
        return self.hit * self.load_us > self.lookup_us * (2.0 - self.hit)

    def use_cache(self) -> bool:
        """
        Whether this call goes through the cache (always, or as a probe).
        """
        self.calls += 1
        if self.pays() or self.calls % self.probe_every == 0:
            return True
        self.bypassed += 1
        return False

    def looked_up(self, seconds: float, hit: bool) -> None:
        """
        Record one lookup's cost and outcome.
        """
        a = self.alpha if self.calls > 1 else 1.0
        self.lookup_us += a * (seconds * 1e6 - self.lookup_us)
        # While bypassed, each probe weighs more: a route whose first calls were
        # cold misses (every key is new once) is cached again within a few probes
        # once it repeats, not after hundreds of calls.
        weight = a if self.pays() else max(a, self.probe_alpha)
        self.hit += weight * ((1.0 if hit else 0.0) - self.hit)

    def loaded(self, seconds: float) -> None:
        """
        Record what one load from the store cost.
        """
        self.loads += 1
        if self.loads == 1:
            self.load_us = seconds * 1e6
        else:
            self.load_us += self.alpha * (seconds * 1e6 - self.load_us)

    def stats(self) -> dict[str, float]:
        """
        The averages and whether the route is cached now.
        """
        return {
            "hit_ratio": round(self.hit, 3),
            "lookup_us": round(self.lookup_us, 1),
            "load_us": round(self.load_us, 1),
            "cached": int(self.pays()),
            "bypassed": self.bypassed,
        }


class RedisCache:
    """
    Bounded-time get and set, read-through with single flight per key, used per
    route only while it pays (``RoutePolicy``).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout: float = 0.1,
        ttl_s: int = 300,
        breaker: CircuitBreaker | None = None,
        loop_lag: LoopLag | None = None,
        log_interval_s: float = 30.0,
        near_entries: int = 4096,
        tracer: Tracer | None = None,
    ) -> None:
        self._client = client
        # A span per GET and SET inside a trace (None: tracing is off).
        self._tracer = tracer
        self._timeout = timeout
        self._ttl_s = ttl_s
        self._breaker = breaker or Protection().redis.breaker
        self._loop_lag = loop_lag
        self._log_interval_s = log_interval_s
        self._last_logged = float("-inf")
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._pending: set[asyncio.Future[None]] = set()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.busy = 0
        self.routes: dict[str, RoutePolicy] = {}
        # Recently read or written entries, kept in this process (see _remember).
        self._near: OrderedDict[str, tuple[str, object]] = OrderedDict()
        self._near_size = near_entries

    @property
    def available(self) -> bool:
        """
        False while Redis's breaker is open and waiting (the cache is skipped);
        once the wait is over, the next call is let through as a probe.
        """
        return not self._breaker.refusing()

    def _failed(self, action: str, exc: BaseException, started: float) -> Outcome:
        if _pool_busy(exc):
            # Every pooled connection is in use: Lake is busy, Redis is not sick.
            # A miss, which the breaker ignores.
            self.busy += 1
            return Outcome.IGNORED
        lag = self._loop_lag
        if (
            isinstance(exc, TimeoutError)
            and lag is not None
            and lag.stalled_since(started) >= self._timeout / 2
        ):
            # The loop itself was too busy to hear the answer in time: a miss, not
            # Redis's failure (a saturated Lake must not switch its cache off).
            self.busy += 1
            return Outcome.IGNORED
        self.errors += 1
        now = time.monotonic()
        if now - self._last_logged >= self._log_interval_s:
            self._last_logged = now
            log.warning(
                "cache_unavailable",
                action=action,
                errors=self.errors,
                error=type(exc).__name__,
            )
        return Outcome.FAILURE

    async def get(self, key: str) -> bytes | None:
        """
        Return the cached bytes for ``key``, or None on a miss or any failure.
        """
        try:
            ticket = self._breaker.allow()
        except CircuitOpenError:
            return None
        span = child_span(self._tracer, "redis GET", _REDIS_SPAN)
        started = time.perf_counter()
        outcome = Outcome.SUCCESS
        error: BaseException | None = None
        value = None
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.get(key)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            outcome = self._failed("get", exc, started)
            error = exc
            return None
        except BaseException as exc:
            outcome = Outcome.IGNORED  # cancelled: says nothing of Redis
            error = exc
            raise
        finally:
            self._breaker.record(ticket, outcome, time.perf_counter() - started)
            if span is not None:
                span.set_attribute("lake.cache.hit", value is not None)
                end_span(span, error)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        """
        Store ``value`` under ``key`` with the TTL; skipped on failure or open breaker.
        """
        try:
            ticket = self._breaker.allow()
        except CircuitOpenError:
            return
        span = child_span(self._tracer, "redis SET", _REDIS_SPAN)
        started = time.perf_counter()
        outcome = Outcome.SUCCESS
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(key, value, ex=self._ttl_s)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            outcome = self._failed("set", exc, started)
            error = exc
        except BaseException as exc:
            outcome = Outcome.IGNORED
            error = exc
            raise
        finally:
            self._breaker.record(ticket, outcome, time.perf_counter() - started)
            end_span(span, error)

    def peek(self, key: str, version: str | None, route: str = "") -> object:
        """
        The entry of ``key`` this process holds at ``version``, answered without
        waiting on anything; ``MISS`` when there is none (or no version, or the
        route is served straight from its store: ``read_through`` decides).
        """
        if version is None:
            return MISS
        near = self._near.get(key)
        if near is None or near[0] != version:
            return MISS
        policy = self.routes.get(route) if route else None
        if policy is not None:
            if not policy.pays():
                return MISS
            policy.calls += 1
            policy.looked_up(0.0, hit=True)
        self.hits += 1
        self._near.move_to_end(key)
        return near[1]

    async def read_through(
        self,
        key: str,
        version: Callable[[], Awaitable[str]],
        load: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        route: str = "",
        leased: str | None = None,
    ) -> T:
        """
        Return the value of ``key`` cached at ``version()``, or load it.

        The entry stores the version it was loaded at; the lookup and the version
        read run concurrently, and an entry of another version is a miss. One load
        per (key, version) runs at a time; the store back to Redis does not delay
        the answer. With a ``route`` name, reads of that route skip the cache while
        it does not pay (see ``RoutePolicy``). A ``leased`` version (this
        process's lease, ``stores.lease``) is the current one: no read of it, and
        an entry this process holds is answered without waiting on anything.
        """
        policy = self.routes.get(route) if route else None
        if route and policy is None:
            policy = self.routes[route] = RoutePolicy()
        if policy is not None and not policy.use_cache():
            started = time.perf_counter()
            value = await load()
            policy.loaded(time.perf_counter() - started)
            return value
        started = time.perf_counter()
        current = leased
        near = self._near.get(key)
        if near is not None:
            # An entry this process read or wrote lately, kept decoded: only the
            # version is asked (read-your-writes as ever), not Redis.
            if current is None:
                current = await version()
            if near[0] == current:
                self.hits += 1
                if key in self._near:  # another reader may have dropped it
                    self._near.move_to_end(key)
                if policy is not None:
                    policy.looked_up(time.perf_counter() - started, hit=True)
                return near[1]  # type: ignore[return-value]
            self._near.pop(key, None)  # an older version: never served again
        failures = self.errors + self.busy
        if current is not None:  # known already: Redis may hold a newer entry
            cached = await self.get(key)
        else:
            # The version read runs beside the GET: one task, not gather's two.
            current_version = asyncio.ensure_future(version())
            try:
                cached = await self.get(key)
            except BaseException:  # cancelled: the version read is not wanted
                current_version.cancel()
                raise
            current = await current_version
        looked = time.perf_counter() - started
        tag = current.encode() + b"\n"
        if cached is not None and cached.startswith(tag):
            try:
                value = decode(cached[len(tag) :])
            except (ValueError, KeyError, TypeError):
                self.errors += 1  # unreadable entry: load it again
            else:
                self.hits += 1
                self._remember(key, current, value, len(cached))
                if policy is not None:
                    policy.looked_up(looked, hit=True)
                return value
        self.misses += 1
        # A lookup that failed (Redis away, timing out) says whether Redis is up,
        # which its breaker judges, not whether caching pays: counted, the
        # timeouts of a failover kept the route off the cache long after.
        if policy is not None and self.errors + self.busy == failures:
            policy.looked_up(looked, hit=False)
        flight = f"{key}@{current}"
        while (leader := self._inflight.get(flight)) is not None:
            result = await asyncio.shield(leader)
            if result is not _RETRY:
                return result  # type: ignore[no-any-return]
        started = time.perf_counter()
        value = await self._lead(flight, load)
        if policy is not None:
            policy.loaded(time.perf_counter() - started)
        # Encoded in the background too: the caller has its answer first.
        self._spawn(self._store(key, current, value, encode))
        return value

    async def _store(
        self, key: str, version: str, value: T, encode: Callable[[T], bytes]
    ) -> None:
        try:
            data = version.encode() + b"\n" + encode(value)
        except (TypeError, ValueError):  # a value JSON cannot hold: not cached
            self.errors += 1
            return
        self._remember(key, version, value, len(data))
        await self.set(key, data)

    def _remember(self, key: str, version: str, value: object, size: int) -> None:
        # A bounded LRU of decoded entries, each tagged with its version like the
        # Redis copy; a hit on it still checks the version, so it is never stale.
        # Values are frozen dataclasses, which callers only read.
        if size > _NEAR_MAX_ENTRY:
            return
        self._near[key] = (version, value)
        self._near.move_to_end(key)
        while len(self._near) > self._near_size:
            self._near.popitem(last=False)

    async def _lead(self, flight: str, load: Callable[[], Awaitable[T]]) -> T:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.set_result(_RETRY)
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; nobody else needs to
            raise
        finally:
            del self._inflight[flight]
        future.set_result(value)
        return value

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, grace: float = 1.0) -> None:
        """
        Let background writes finish (or cancel them) before Redis closes.
        """
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def stats(self) -> dict[str, Any]:
        """
        Hits, misses, errors, whether Redis is being skipped right now, and each
        route's policy figures.
        """
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "busy": self.busy,
            "skipping": int(not self.available),
            "breaker": self._breaker.state.value,
            "routes": {name: p.stats() for name, p in self.routes.items()},
            "connections": redis_connections(self._client),
        }

    async def ping(self) -> str | None:
        """
        PING Redis (whatever its breaker says); raise StoreUnavailableError on no
        answer, and say so while the breaker is not closed.
        """
        try:
            async with asyncio.timeout(max(self._timeout, 0.5)):
                await self._client.ping()
        except (aioredis.RedisError, OSError, TimeoutError):
            msg = "redis did not answer PING"
            raise StoreUnavailableError(msg) from None
        state = self._breaker.state
        if state is not BreakerState.CLOSED:
            return f"circuit {state.value.replace('_', '-')}"
        return None


class CachedReads:
    """
    Reads served through the cache: the key from the operation, the version from
    PostgreSQL, the entry from Redis while caching the route pays.
    """

    def __init__(self, cache: Cache, database: Database) -> None:
        self._cache = cache
        self._database = database

    def peek(self, tenant: str, scope: str, operation: object) -> object:
        """
        ``operation``'s answer when this process holds it at the version its lease
        knows, without waiting on anything; ``MISS`` otherwise (then ``read``).
        """
        if not self._cache.available:
            return MISS
        leased = self._database.leased_version(tenant, scope)
        if leased is None:
            return MISS
        key = cache_key(tenant, scope, operation)
        return self._cache.peek(key, leased, type(operation).__name__)

    async def read(
        self,
        tenant: str,
        scope: str,
        operation: object,
        load: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> T:
        """
        ``operation``'s answer, cached under its tenant's ``scope``; straight from
        ``load()`` while the cache is being skipped.
        """
        if not self._cache.available:
            return await load()
        return await self._cache.read_through(
            cache_key(tenant, scope, operation),
            partial(self._database.cache_version, tenant, scope),
            load,
            codec.encode,
            codec.decode,
            route=type(operation).__name__,
            leased=self._database.leased_version(tenant, scope),
        )

    async def uncached(
        self, tenant: str, scope: str, load: Callable[[], Awaitable[T]]
    ) -> T:
        """
        ``load()`` itself: a read the cache does not keep.
        """
        return await load()
