"""
Per-call authentication, authorisation by scope, and the caller's deadline, as one
server interceptor.

A call carries ``authorization: Bearer <token>``. Tokens come from two places: the
settings (``auth.tokens``, SHA-256 hash -> tenant, or -> ``{tenant, scope}``) and the
``lake_tokens`` table, which every instance re-reads every ``auth.refresh_s`` seconds
(``Keyring``), so a token created or revoked on one instance counts on all of them
within that time. While PostgreSQL is unreachable the last table read stays in force.

Verified tokens are cached (bounded; emptied whenever the token set changes), so a
repeated call costs a dict lookup instead of a SHA-256. A token's tenant becomes the
call's tenant; an ``x-lake-tenant`` header naming another tenant is refused.

Every Lake method needs a scope (``METHOD_SCOPES``; a method missing there needs
admin), whatever its streaming kind. Standard health, reflection and
``LakeHealth/GetHealth`` stay open. Failures are logged as ``auth_failed`` with the
peer and a reason, never the token; a peer with too many authentication failures in
a window is refused at once until the window ends (``FailureLimiter``).

The same wrapper opens the call's deadline scope: the client's remaining time, or
the server's maximum when the client sets none or more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import structlog

from lake.api.wrapped import Layer
from lake.deadline import deadline_scope
from lake.errors import LakeError
from lake.tokens import Scope, TokenRecord, TokenStore, hash_token, new_token

__all__ = [
    "METHOD_SCOPES",
    "OPEN_METHODS",
    "AuthInterceptor",
    "FailureLimiter",
    "Keyring",
    "Principal",
    "current_principal",
    "current_tenant",
    "hash_token",
    "new_token",
    "settings_principals",
]

log = structlog.get_logger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPEN_METHODS = frozenset({"/lake.v1.LakeHealth/GetHealth"})


def _is_open(method: str) -> bool:
    return method in OPEN_METHODS or method.startswith(OPEN_PREFIXES)


def _scopes(service: str, scope: Scope, *methods: str) -> dict[str, Scope]:
    return {f"/lake.v1.{service}/{m}": scope for m in methods}


# The one table of what each Lake method needs; anything else needs admin.
METHOD_SCOPES: Mapping[str, Scope] = {
    **_scopes("Vectors", Scope.READ, "Search", "SearchText"),
    **_scopes(
        "Vectors", Scope.WRITE, "CreateCollection", "Upsert", "Delete", "UpsertTexts"
    ),
    **_scopes("TimeSeries", Scope.READ, "Query", "Aggregate"),
    **_scopes("TimeSeries", Scope.WRITE, "Write", "WriteStream"),
    **_scopes("Spatial", Scope.READ, "Nearby", "Nearest", "InBox", "InPolygon"),
    **_scopes("Spatial", Scope.WRITE, "Upsert"),
    **_scopes("LakeHealth", Scope.ADMIN, "GetStatus"),
    **_scopes("Tokens", Scope.ADMIN, "Create", "List", "Revoke"),
    # Its own tenant's usage; another tenant's needs admin (checked by the servicer).
    **_scopes("Usage", Scope.READ, "GetUsage"),
}

_PRINCIPAL: ContextVar[Principal] = ContextVar("lake_principal")


@dataclass(frozen=True, slots=True)
class Principal:
    """
    Who a call acts as: a tenant, a scope, and where the token came from.

    ``expires`` is a Unix time (``inf`` for never); ``token_id`` is the table's id,
    or ``settings`` for a configured token.
    """

    tenant: str
    scope: Scope
    token_id: str = "settings"  # noqa: S105 -- a label, not a secret
    expires: float = float("inf")


def current_principal() -> Principal:
    """
    The principal of the call being served (set by the interceptor).
    """
    return _PRINCIPAL.get()


def current_tenant() -> str:
    """
    The tenant of the call being served (set by the interceptor).
    """
    return _PRINCIPAL.get().tenant


def settings_principals(tokens: Mapping[str, Any]) -> dict[str, Principal]:
    """
    Principals by hash from ``auth.tokens``: ``"<hash>" = "tenant"`` (scope write)
    or ``"<hash>" = { tenant = "t", scope = "admin" }``.
    """
    found = {}
    for digest, value in tokens.items():
        if isinstance(value, Mapping):
            tenant = str(value["tenant"])
            scope = Scope.parse(str(value.get("scope", "write")))
        else:
            tenant, scope = str(value), Scope.WRITE
        found[str(digest).lower()] = Principal(tenant=tenant, scope=scope)
    return found


class Keyring:
    """
    The tokens one instance accepts: settings plus a periodically refreshed copy of
    the token table, and a bounded cache of verified tokens.
    """

    def __init__(
        self,
        settings_tokens: Mapping[str, Any],
        *,
        cache_size: int = 10_000,
        expect_table: bool = False,
    ) -> None:
        # Until the token table has been read once (start-up), a token not in the
        # settings may well be a valid table token: ``pending`` says so.
        self.pending = expect_table
        self._static = settings_principals(settings_tokens)
        self._stored: dict[str, TokenRecord] = {}
        self._live: dict[str, Principal] = dict(self._static)
        self._cache: dict[str, Principal] = {}
        self._cache_size = cache_size
        self._refresh_failing = False
        # One refresh at a time: a slow read must not land after a newer one (a
        # revoked token would come back until the next refresh).
        self._refresh_lock = asyncio.Lock()
        self.store: TokenStore | None = None

    def lookup(self, token: str) -> Principal | str:
        """
        The token's principal, or why it is refused: unknown, expired or revoked.
        """
        found = self._cache.get(token)
        if found is None:
            digest = hash_token(token)
            found = self._live.get(digest)
            if found is None:
                return self._why_not(digest)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # rare: cheaper than tracking recency per call
            self._cache[token] = found
        if found.expires <= time.time():
            return "expired"
        return found

    def _why_not(self, digest: str) -> str:
        record = self._stored.get(digest)
        if record is None:
            return "unknown"
        return "revoked" if record.revoked_at is not None else "expired"

    async def refresh(self) -> bool:
        """
        Re-read the token table; True when the token set changed.

        A failure keeps the previous set (logged once until the table answers again).
        """
        if self.store is None:
            return False
        async with self._refresh_lock:
            changed = await self._refresh(self.store)
        if not self._refresh_failing:
            self.pending = False
        return changed

    async def _refresh(self, store: TokenStore) -> bool:
        try:
            records = await store.snapshot()
        except LakeError as exc:
            if not self._refresh_failing:
                kept = len(self._live)
                log.warning("token_refresh_failed", error=str(exc), kept=kept)
            self._refresh_failing = True
            return False
        if self._refresh_failing:
            log.info("token_refresh_recovered", tokens=len(records))
            self._refresh_failing = False
        stored = {r.token_hash: r for r in records}
        if stored == self._stored:
            return False
        self._apply(stored)
        return True

    def _apply(self, stored: dict[str, TokenRecord]) -> None:
        live = {
            digest: Principal(
                tenant=r.tenant,
                scope=r.scope,
                token_id=r.id,
                expires=r.expires_at.timestamp() if r.expires_at else float("inf"),
            )
            for digest, r in stored.items()
            if r.revoked_at is None
        }
        live.update(self._static)  # a configured token means what settings say
        self._stored, self._live = stored, live
        self._cache = {}

    async def watch(self, interval: float) -> None:
        """
        Refresh every ``interval`` seconds until cancelled.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                # Bounded: a silent network must not stall revocations unseen.
                async with asyncio.timeout(max(interval * 5, 1.0)):
                    await self.refresh()
            except Exception as exc:  # never let the loop die quietly
                log.warning(
                    "token_refresh_failed",
                    reason=_refresh_reason(exc),
                    kept=len(self._live),
                )


def _refresh_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) if isinstance(exc, LakeError) else "unexpected failure"


def _peer_host(peer: str) -> str:
    # "ipv4:127.0.0.1:54321" -> "ipv4:127.0.0.1": a reconnect gets a new port.
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


class FailureLimiter:
    """
    Counts authentication failures per peer host in fixed windows; a peer over the
    limit is refused without a check until its window ends.
    """

    def __init__(
        self,
        *,
        max_failures: int = 20,
        window_s: float = 60.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_peers = max_peers
        self._clock = clock
        self._peers: dict[str, list[float]] = {}  # host -> [window start, failures]

    def _entry(self, host: str) -> list[float]:
        now = self._clock()
        entry = self._peers.get(host)
        if entry is None or now - entry[0] >= self._window:
            if len(self._peers) >= self._max_peers:
                self._prune(now)
            entry = self._peers[host] = [now, 0.0]
        return entry

    def _prune(self, now: float) -> None:
        self._peers = {
            h: e for h, e in self._peers.items() if now - e[0] < self._window
        }
        if len(self._peers) >= self._max_peers:
            self._peers.clear()  # a flood of distinct peers: start over

    def blocked(self, peer: str) -> bool:
        """
        True when ``peer`` used up its failures in the current window.
        """
        entry = self._peers.get(_peer_host(peer))
        if entry is None or self._clock() - entry[0] >= self._window:
            return False
        return entry[1] >= self._max

    def failed(self, peer: str) -> int:
        """
        Count one failure of ``peer``; return its failures in this window.
        """
        entry = self._entry(_peer_host(peer))
        entry[1] += 1
        return int(entry[1])


if TYPE_CHECKING:
    _Context = grpc.aio.ServicerContext[Any, Any]
else:  # generic only in grpc-stubs, not at run time
    _Context = grpc.aio.ServicerContext


class AuthInterceptor(Layer):
    """
    Authenticates and authorises each call and bounds it by its deadline.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        max_deadline: float,
        enabled: bool = True,
        limiter: FailureLimiter | None = None,
    ) -> None:
        super().__init__()
        self._keyring = keyring
        self._max_deadline = max_deadline
        self._enabled = enabled
        self._limiter = limiter or FailureLimiter()

    def wrap(self, handler: Any, method: str) -> Any:
        if _is_open(method):
            return handler
        needs = METHOD_SCOPES.get(method, Scope.ADMIN)  # unknown: fail closed
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._guard(handler.unary_unary, needs))
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=self._guard(handler.stream_unary, needs)
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=self._guard_stream(handler.unary_stream, needs)
            )
        if handler.stream_stream is not None:
            return handler._replace(
                stream_stream=self._guard_stream(handler.stream_stream, needs)
            )
        return None  # no behaviour at all: nothing to serve unchecked

    def _budget(self, context: _Context) -> float:
        left: float | None = context.time_remaining()  # None: no deadline
        return self._max_deadline if left is None else min(left, self._max_deadline)

    def _guard(self, inner: Callable[[Any, Any], Awaitable[Any]], needs: Scope) -> Any:
        async def guarded(request: Any, context: _Context) -> Any:
            principal = await self._authorize(context, needs)
            token = _PRINCIPAL.set(principal)
            try:
                with deadline_scope(self._budget(context)):
                    return await inner(request, context)
            finally:
                _PRINCIPAL.reset(token)

        return guarded

    def _guard_stream(self, inner: Callable[[Any, Any], Any], needs: Scope) -> Any:
        async def guarded(request: Any, context: _Context) -> AsyncIterator[Any]:
            principal = await self._authorize(context, needs)
            # Each RPC runs in its own task, so the principal stays with this call.
            _PRINCIPAL.set(principal)
            with deadline_scope(self._budget(context)):
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # a coroutine that writes with context.write()
                    await result

        return guarded

    async def _authorize(self, context: _Context, needs: Scope) -> Principal:
        metadata = dict(context.invocation_metadata() or ())
        asked = metadata.get("x-lake-tenant")
        if not self._enabled:
            return Principal(tenant=str(asked or "default"), scope=Scope.ADMIN)
        peer = context.peer() or "unknown"
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        token = token.strip()
        found = (
            self._keyring.lookup(token)
            if scheme.lower() == "bearer" and token
            else "missing"
        )
        if found == "unknown" and self._keyring.pending:
            # Starting: the token table is not read yet, so an unknown token may be
            # a valid one. Retryable, and not counted against the peer.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting: retry shortly")
        if isinstance(found, str):
            # The limit applies to failures only: a valid token always passes, so
            # one bad client behind a shared address (a TLS proxy) cannot lock
            # every other client out. A blocked peer's failures cost no log line.
            if self._limiter.blocked(peer):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "too many failures"
                )
            await self._refuse_unauthenticated(context, peer, found)
        if asked is not None and asked != found.tenant:
            log.warning("auth_failed", peer=peer, reason="tenant_mismatch")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "token does not grant that tenant"
            )
        if found.scope < needs:
            log.warning(
                "auth_failed",
                peer=peer,
                reason="wrong_scope",
                id=found.token_id,
                needs=needs.label,
                has=found.scope.label,
            )
            article = "an" if needs.label[0] in "aeiou" else "a"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"needs {article} {needs.label} token",
            )
        return found

    async def _refuse_unauthenticated(
        self, context: _Context, peer: str, reason: str
    ) -> NoReturn:
        failures = self._limiter.failed(peer)
        if self._limiter.blocked(peer):
            # Once per window: later calls are refused before any check or log.
            log.warning("auth_rate_limited", peer=peer, failures=failures)
        else:
            log.warning("auth_failed", peer=peer, reason=reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason} token")
