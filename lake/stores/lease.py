"""
A lease on cache generations: cached reads that need no round trip.

Every cached read needs the current generation of its scope (``stores.cache``).
Asking PostgreSQL on every read (``stores.versions``, batched) keeps read-your-writes
across instances but costs each read a wait for a query sent after it asked. Here
the reads pay nothing and the writes pay instead:

- **Polls.** The version connection asks, every ``poll`` seconds while reads come,
  for every generation changed since the last look: rows whose ``changed`` (the
  transaction that last set them, kept by a trigger) is at or past the snapshot
  xmin of the previous poll. Each poll's snapshot thus hands over every change
  committed between two polls, whatever order the transactions started in (a
  transaction below a snapshot's xmin had ended before that snapshot was taken).
  So this process's copy (``known``) is the truth as of the last poll, for every
  scope it holds.
- **The lease.** A read may use its copy while the last completed poll was sent
  less than ``valid`` (0.8 x ``lease``) seconds ago.
- **Writers wait.** A write that changed a generation waits ``lease`` seconds after
  its commit before it is acknowledged, when other Lake processes hold leases on
  the same database (``peers``: their version connections, named in
  ``pg_stat_activity``). When its client then reads anywhere, the process it
  reaches has polled since that commit, or its lease has run out and it asks
  PostgreSQL: read-your-writes across instances holds.
- **Joining.** A process trusts its copy only ``warmup`` seconds after its
  connection opened: by then every writer's count of peers (refreshed every
  second, trusted for two) includes it.
- **Its own writes** are marked until the next poll sent after their commit, so a
  process alone (whose writes do not wait) never serves its own stale copy.

A lost connection, a failed poll, a lease run out: reads fall back to asking
PostgreSQL, as without a lease. ``lease = 0`` turns all of it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["PEER_FRESH_S", "Key", "VersionLease", "lease_app_name"]

Key = tuple[str, str]

# How long a count of peers is trusted, and so how long a new process waits before
# it trusts its copy (plus one lease): every writer has counted it by then.
PEER_FRESH_S = 2.0
# Scopes held in the copy at most (the oldest is dropped: it is only a fast path).
_MAX_KNOWN = 100_000

APP_NAME = "lake-versions"


def lease_app_name(lease_s: float) -> str:
    """
    The version connection's application_name: writers elsewhere read the lease.
    """
    return f"{APP_NAME} lease={round(lease_s * 1000)}"


class VersionLease:
    """
    This process's copy of the generations it reads, and whether it may use it.

    Args:
        lease: seconds a write waits for other processes' leases (0: off).
        blind: the peers cannot be counted (behind a connection pooler, whose
            server connections carry no client's name for long): every write
            waits the lease.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        lease: float,
        *,
        blind: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease = max(0.0, lease)
        self._blind = blind
        self._valid = 0.8 * self.lease
        self._clock = clock
        self.known: dict[Key, int] = {}
        self._dirty: dict[Key, float] = {}
        self.xmin: str | None = None  # the last poll's snapshot xmin
        self._fenced = float("-inf")  # when the last completed poll was sent
        self._trusted_from = float("inf")
        self._peers_wait = self.lease  # until counted: as if peers held leases
        self._peers_at = float("-inf")
        self.last_read = float("-inf")
        self.leased = 0  # reads answered from the copy
        self.polls = 0
        self.peers = -1  # other version connections seen (-1: not counted yet)

    @property
    def enabled(self) -> bool:
        """
        Whether reads may ever be answered from the copy.
        """
        return self.lease > 0.0

    def get(self, key: Key) -> int | None:
        """
        ``key``'s generation from the copy, or None when it must be asked for.
        """
        now = self._clock()
        self.last_read = now
        if now < self._trusted_from or now - self._fenced >= self._valid:
            return None
        if key in self._dirty:
            return None
        gen = self.known.get(key)
        if gen is not None:
            self.leased += 1
        return gen

    def fresh(self) -> bool:
        """
        True while the last poll is recent enough for the copy to be used.
        """
        now = self._clock()
        return now >= self._trusted_from and now - self._fenced < self._valid

    def connected(self) -> None:
        """
        A new version connection: start over, trusted after the warm-up.
        """
        self._forget()
        self._trusted_from = self._clock() + PEER_FRESH_S + self.lease

    def lost(self) -> None:
        """
        The connection failed: nothing is trusted until a new one has warmed up.
        """
        self._forget()
        self._trusted_from = float("inf")

    def _forget(self) -> None:
        self.known.clear()
        self._dirty.clear()
        self.xmin = None
        self._fenced = float("-inf")

    def polled(
        self, sent: float, xmin: str, rows: Iterable[tuple[str, str, int]]
    ) -> None:
        """
        A poll sent at ``sent`` came back: the changes since the previous one,
        and the xmin of its snapshot for the next.
        """
        known = self.known
        if self.xmin is not None:
            for tenant, scope, gen in rows:
                key = (tenant, scope)
                if key in known:
                    known[key] = gen
        # Not before: the first poll only sets where the next one starts.
        self.xmin = xmin
        self.polls += 1
        self._fenced = sent
        if self._dirty:
            self._dirty = {k: t for k, t in self._dirty.items() if t > sent}

    def observed(
        self, sent: float, since_baseline: bool, found: dict[Key, int]
    ) -> None:
        """
        Generations read on the connection (a batch sent at ``sent``); kept when
        a poll had set the baseline before it was sent, so the polls after it
        hand over every later change.
        """
        if not (self.enabled and since_baseline):
            return
        known = self.known
        for key, gen in found.items():
            known[key] = gen
            marked = self._dirty.get(key)
            if marked is not None and marked <= sent:
                del self._dirty[key]
        while len(known) > _MAX_KNOWN:
            del known[next(iter(known))]

    def wrote(self, keys: Iterable[Key]) -> None:
        """
        This process committed changes to ``keys``: not answered from the copy
        until a poll sent after now has come back.
        """
        if not self.enabled:
            return
        now = self._clock()
        for key in keys:
            self._dirty[key] = now

    def counted(self, peers: int, max_lease: float, blind: bool) -> None:
        """
        The other version connections on the database (``peers``), the longest
        lease among them, and whether the count can be trusted at all (``blind``:
        this process's own connection is not seen by its name, behind a pooler).
        """
        self.peers = peers
        blind = blind or self._blind
        self._peers_wait = max(self.lease, max_lease) if blind else max_lease
        self._peers_at = self._clock()

    def write_wait(self) -> float:
        """
        Seconds a write that changed generations waits after its commit.
        """
        if self._clock() - self._peers_at < PEER_FRESH_S:
            return self._peers_wait
        return max(self.lease, self._peers_wait)  # not counted lately

    def stats(self) -> dict[str, int | float]:
        """
        Reads answered from the copy, polls, peers, the write wait, the copy's size.
        """
        return {
            "leased": self.leased,
            "polls": self.polls,
            "peers": self.peers,
            "write_wait_ms": round(self.write_wait() * 1000, 1),
            "known": len(self.known),
            "fresh": int(self.fresh()),
        }
