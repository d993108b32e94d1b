"""
RateQuotas: calls per second per tenant and operation class, one budget shared by
every instance through Redis (the ``limits`` library over Lake's own redis-py
client, standalone, sentinel or cluster: ``quota_storage``).

- Unlimited (0, the default) costs two dict lookups: no Redis round trip.
- A limited call costs at most one ``hit()`` (one Lua script call): never
  test-then-hit. With ``lease`` > 0 one hit takes ``lease`` of the window's
  budget at once (``cost=k``, k = max(1, floor(lease * budget))) and the next
  k - 1 calls of that tenant and class on this instance spend it without Redis,
  within the window it was taken in. A round trip costs ~150 us of a CPU-bound
  Lake (redis-py), a cached read ~350 us: one per call made a quota'd read half
  as fast. Leases never admit more than the budget (every token was counted in
  Redis first); they may admit less, by at most (k - 1) per instance per window
  (tokens leased and not used). A budget under 1 / lease calls has k = 1: exact.
- A refused call remembers until when it is refused: further calls of that tenant
  and class on this instance are refused without asking Redis until then, so a
  client hammering past its quota costs Lake no Redis traffic. Only the first
  refusal asks Redis for the window's reset time (``retry_after``).
- Redis failing (down, timing out): fail open to ``LocalBuckets`` at the configured
  rate per instance for ``cooldown_s``, then Redis again; health says DEGRADED
  "quotas local" meanwhile.
- The overrides are re-read every ``refresh_s`` by the call that finds them stale
  (no background task); ``lake quota set`` applies them at once on the instance
  that served it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

from lake.errors import LakeError, QuotaExceededError
from lake.quotas.local import LocalBuckets
from lake.quotas.policy import QuotaBook

__all__ = [
    "QUOTA_PREFIX",
    "STRATEGIES",
    "ClusterClientStorage",
    "QuotaSource",
    "RateQuotas",
    "quota_storage",
]

log = structlog.get_logger(__name__)

STRATEGIES: Mapping[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
_REDIS_FAILURES = (aioredis.RedisError, OSError, TimeoutError)
LOCAL = "quotas local"
QUOTA_PREFIX = "lake:quota"


class QuotaSource(Protocol):
    """
    Where the overrides live (``lake.stores.quotas.PgQuotaStore``).
    """

    async def snapshot(self) -> dict[str, dict[str, float]]:
        """
        Every tenant's overrides.
        """

    async def namespace(self) -> str:
        """
        This database's namespace: budgets of two databases never mix.
        """


def _pool_busy(exc: BaseException) -> bool:
    # redis-py's BlockingConnectionPool after pool_wait, or a cluster node's full
    # pool (which does not wait): Lake busy, Redis fine.
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(
        exc, aioredis.ConnectionError
    ) and "No connection available" in str(exc)


class ClusterClientStorage(RedisStorage):
    """
    limits' Redis storage over Lake's own ``RedisCluster`` client.

    limits' ``RedisClusterStorage`` builds a cluster client of its own from a url,
    with connections, timeouts and retries of its own; standalone and sentinel
    clients are shared through ``connection_pool``, which a cluster client has
    none of. ``configure_bridge`` is limits' hook for a storage's client (its
    cluster and sentinel storages override it): this one hands over Lake's.
    """

    def __init__(self, client: RedisCluster, *, key_prefix: str) -> None:
        self._client = client
        super().__init__(
            "async+redis://", implementation="redispy", key_prefix=key_prefix
        )

    def configure_bridge(self) -> None:
        """
        Point limits' redis-py bridge at Lake's cluster client.
        """
        bridge = self.bridge
        if not isinstance(bridge, RedispyBridge):  # pragma: no cover -- redispy asked
            msg = "limits did not build its redis-py bridge"
            raise TypeError(msg)
        bridge.storage = self._client
        # limits' client Protocol is the standalone Redis's; its own cluster
        # storage keeps a RedisCluster here just the same.
        bridge.connection_getter = lambda _: self._client  # type: ignore[assignment,return-value]


def quota_storage(redis: aioredis.Redis | RedisCluster) -> RedisStorage:
    """
    limits' storage over Lake's Redis client, whatever its mode: the quota scripts
    use Lake's connections, timeouts and single try. Keys start with ``lake:quota``;
    the sliding window's two keys share a hash tag (limits wraps the limiter key in
    ``{}``), so its script runs in one slot of a cluster.
    """
    if isinstance(redis, RedisCluster):
        return ClusterClientStorage(redis, key_prefix=QUOTA_PREFIX)
    return RedisStorage(
        "async+redis://",
        implementation="redispy",
        # limits types its options as scalars; redis-py takes the pool (the
        # Sentinel-managed one in sentinel mode, which follows a failover).
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        key_prefix=QUOTA_PREFIX,
    )


class RateQuotas:
    """
    Admits or refuses calls by the tenant's rate quota of their operation class.

    Args:
        book: the quotas in force (its overrides refreshed from ``store``).
        redis: Lake's Redis client (standalone, sentinel master or cluster); its
            connections carry the quota scripts too.
        store: the overrides; None keeps the settings' defaults alone.
        strategy: ``sliding-window-counter`` (two counters per key, O(1) for any
            lease) or ``moving-window`` (one Redis list entry per call counted:
            exact, but a lease of k pushes k entries).
        window_s: the window a rate is counted over (a rate r allows
            ceil(r * window_s) calls per window_s seconds).
        cooldown_s: how long to stay local after Redis failed.
        refresh_s: seconds between re-reads of the overrides.
        lease: the share of a window's budget one hit takes (0: one per call).
        limiter: the shared limiter, when not built over ``redis`` (unit tests).
    """

    def __init__(
        self,
        book: QuotaBook,
        redis: aioredis.Redis | RedisCluster | None,
        store: QuotaSource | None = None,
        *,
        strategy: str = "sliding-window-counter",
        window_s: int = 1,
        lease: float = 0.0,
        cooldown_s: float = 1.0,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.book = book
        self._redis = redis
        self._store = store
        self._window = max(1, int(window_s))
        self._lease = lease
        self._leases: dict[tuple[str, str], list[float]] = {}  # [left, until]
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._cooldown = cooldown_s
        self._refresh_s = refresh_s
        self._clock = clock
        self._remote: RateLimiter | None = limiter
        if redis is not None and limiter is None:
            self._remote = STRATEGIES[strategy](quota_storage(redis))
        self._local = LocalBuckets(clock=clock)
        self._items: dict[float, RateLimitItem] = {}
        self._denied: dict[tuple[str, str], float] = {}
        self._local_until = 0.0
        self._namespace = ""
        self._next_refresh = 0.0
        self._loaded = asyncio.Event() if store is not None else None
        self._refreshing = False
        self._refresh_failing = False
        self.refused = 0
        self.local_calls = 0

    # --- admission ------------------------------------------------------------------

    async def admit(self, tenant: str, operation_class: str) -> None:
        """
        Count one call of ``operation_class`` for ``tenant``, or refuse it.

        Raises:
            QuotaExceededError: over the rate; ``retry_after`` says when to try.
        """
        now = self._clock()
        if now >= self._next_refresh:
            await self._refresh_due(now)
        rate = self.book.rate(tenant, operation_class)
        if not rate:
            return
        key = (tenant, operation_class)
        until = self._denied.get(key)
        if until is not None:
            if until > now:
                raise self._refusal(key, until - now)
            del self._denied[key]
        wait = await self._hit(key, rate, now)
        if wait is not None:
            if len(self._denied) >= 10_000:
                self._denied.clear()
            self._denied[key] = now + wait
            raise self._refusal(key, wait)

    def _refusal(self, key: tuple[str, str], wait: float) -> QuotaExceededError:
        self.refused += 1
        tenant, operation_class = key
        return QuotaExceededError(f"{operation_class}_per_s", tenant, wait)

    def _item(self, rate: float) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            amount = max(1, math.ceil(rate * self._window))
            item = self._items[rate] = RateLimitItemPerSecond(amount, self._window)
        return item

    async def _hit(self, key: tuple[str, str], rate: float, now: float) -> float | None:
        """
        One hit; None when admitted, else seconds until a call may be admitted.
        """
        item = self._item(rate)
        if self._remote is not None and now >= self._local_until:
            if self._spend_lease(key, now):
                return None
            size = max(1, int(self._lease * item.amount))
            if size == 1:
                return await self._remote_hit(key, item, 1, now)
            # One lease in flight per key: 32 concurrent calls finding none must
            # not take 32 leases (and exhaust the budget between them).
            lock = self._lock(key)
            async with lock:
                if self._spend_lease(key, now):
                    return None
                until = self._denied.get(key, 0.0)
                if until > now:
                    return until - now
                return await self._remote_hit(key, item, size, now)
        self.local_calls += 1
        return self._local.take(key, rate, item.amount)

    def _spend_lease(self, key: tuple[str, str], now: float) -> bool:
        lease = self._leases.get(key)
        if lease is not None and lease[0] >= 1.0 and now < lease[1]:
            lease[0] -= 1.0
            return True
        return False

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _remote_hit(
        self, key: tuple[str, str], item: RateLimitItem, size: int, now: float
    ) -> float | None:
        remote = self._remote
        assert remote is not None  # noqa: S101 -- checked by the caller
        ids = (self._namespace, *key)
        try:
            if await remote.hit(item, *ids, cost=size):
                if size > 1:
                    self._keep_lease(key, size - 1, now + item.get_expiry())
                return None
            return await self._reset_in(remote, item, ids)
        except _REDIS_FAILURES as exc:
            self._go_local(exc)
        self.local_calls += 1
        return self._local.take(key, item.amount / item.get_expiry(), item.amount)

    def _keep_lease(self, key: tuple[str, str], left: int, until: float) -> None:
        if len(self._leases) >= 10_000:
            self._leases.clear()
        self._leases[key] = [float(left), until]

    async def _reset_in(
        self, remote: RateLimiter, item: RateLimitItem, ids: tuple[str, ...]
    ) -> float:
        # Asked once per refusal period: later refusals are answered locally.
        floor = item.get_expiry() / item.amount
        try:
            stats = await remote.get_window_stats(item, *ids)
        except _REDIS_FAILURES:
            return floor
        return min(max(stats.reset_time - time.time(), 0.001), item.get_expiry())

    def _go_local(self, exc: BaseException) -> None:
        if _pool_busy(exc):
            return  # this call only: a full pool is not a sick Redis
        if self._clock() >= self._local_until:
            log.warning("quotas_local", reason=type(exc).__name__)
        self._local_until = self._clock() + self._cooldown

    # --- health ---------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """
        True while rates are counted per instance (Redis failed lately).
        """
        return self._remote is None or self._clock() < self._local_until

    async def ping(self) -> str | None:
        """
        None while quotas are shared (or none is set); "quotas local" while each
        instance counts alone. Probes Redis when a rate is set.
        """
        if not self.book.limited:
            return None
        if self._redis is None:
            return None if self._remote is not None else LOCAL
        try:
            await self._redis.ping()
        except _REDIS_FAILURES as exc:
            self._go_local(exc)
            return LOCAL
        if self._clock() < self._local_until:
            self._local_until = 0.0
            log.info("quotas_shared_again")
        return None

    def stats(self) -> dict[str, Any]:
        """
        Refusals and calls counted locally so far, and the mode.
        """
        return {
            "refused": self.refused,
            "local_calls": self.local_calls,
            "mode": "local" if self.local else "shared",
        }

    # --- overrides ------------------------------------------------------------------

    async def _refresh_due(self, now: float) -> None:
        loaded = self._loaded
        if self._refreshing:
            if loaded is not None and not loaded.is_set():
                # The first read is under way: wait for it (bounded).
                try:
                    async with asyncio.timeout(self._refresh_s):
                        await loaded.wait()
                except TimeoutError:
                    pass
            return
        await self.refresh()

    async def refresh(self) -> None:
        """
        Re-read the overrides now; a failure keeps the last ones (logged once).
        """
        self._next_refresh = self._clock() + self._refresh_s
        store = self._store
        if store is None:
            return
        self._refreshing = True
        try:
            async with asyncio.timeout(max(self._refresh_s, 1.0)):
                if not self._namespace:
                    self._namespace = await store.namespace()
                self.book.replace(await store.snapshot())
        except (LakeError, TimeoutError) as exc:
            if not self._refresh_failing:
                reason = str(exc) if isinstance(exc, LakeError) else "timed out"
                log.warning("quota_refresh_failed", reason=reason)
            self._refresh_failing = True
        else:
            if self._refresh_failing:
                log.info("quota_refresh_recovered")
            self._refresh_failing = False
        finally:
            self._refreshing = False
            if self._loaded is not None:
                self._loaded.set()
