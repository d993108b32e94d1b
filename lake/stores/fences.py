"""
Fences: how far a replica must have replayed for a read to see every write it must.

A read may go to a replica only if the replica has replayed every write to the
read's scope that was acknowledged before the read began, on any instance. Each
such write changes its scope's generation (``cache_generations``) in its own
transaction, and the version reader (``stores.versions``) reads generations from
the primary in batches whose snapshot is taken after the reader asked. With
replicas configured, each batch also reads the primary's WAL insert position
(``pg_current_wal_insert_lsn()``) in the same statement: every transaction visible
in the batch's snapshot had inserted its commit record before the snapshot was
taken, so it ends at or before that position.

So when a batch sent after a read began returns generation ``g`` for its scope,
the write that made ``g`` committed at or before the position of the *first* batch
that ever returned ``g`` (this book remembers it per scope). That position is the
read's fence: a replica that has replayed past it holds every write the read must
see (PostgreSQL makes a transaction visible to standby snapshots once its commit
record is replayed). A scope this process has not seen yet gets the current
position, the strictest fence. Generations are random 53-bit numbers, as the cache
already assumes: a scope returning to an older generation by chance is ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FenceBook", "lsn_text"]

Key = tuple[str, str]


def lsn_text(position: int) -> str:
    """
    A WAL position (bytes) as PostgreSQL prints a ``pg_lsn``: ``16/B374D848``.
    """
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass(slots=True)
class _Seen:
    gen: int
    fence: int  # WAL position by which the write that made ``gen`` had committed
    batch: int  # the last batch that returned this scope


class FenceBook:
    """
    Per scope, the generation last read from the primary and its fence.

    Args:
        capacity: scopes remembered (least recently read forgotten first; a
            forgotten scope gets the strictest fence again).
    """

    def __init__(self, *, capacity: int = 65536) -> None:
        self._seen: OrderedDict[Key, _Seen] = OrderedDict()
        self._capacity = capacity
        self._batch = 0

    def mark(self) -> int:
        """
        The last batch begun so far: batches after it see every write acknowledged
        before this call (take it when a read begins).
        """
        return self._batch

    def begin_batch(self) -> int:
        """
        Number a batch about to be sent (the version reader calls it).
        """
        self._batch += 1
        return self._batch

    def record(self, batch: int, position: int, found: Mapping[Key, int]) -> None:
        """
        Note the generations batch ``batch`` returned and the primary's WAL
        position read in the same statement.
        """
        seen, capacity = self._seen, self._capacity
        for key, gen in found.items():
            entry = seen.get(key)
            if entry is None or entry.gen != gen:
                seen[key] = _Seen(gen, position, batch)
            else:
                entry.batch = batch
            seen.move_to_end(key)
        while len(seen) > capacity:
            seen.popitem(last=False)

    def fence(self, tenant: str, scope: str, since: int) -> int | None:
        """
        The fence of ``scope`` as of a batch begun after ``since``, or None when no
        such batch has returned it yet.
        """
        entry = self._seen.get((tenant, scope))
        if entry is None or entry.batch <= since:
            return None
        return entry.fence

    def stats(self) -> dict[str, int]:
        """
        Scopes remembered and batches numbered.
        """
        return {"scopes": len(self._seen), "batches": self._batch}
