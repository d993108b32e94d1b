"""
Vector store over pgvector: upsert by id, top-k by cosine distance.
"""

from __future__ import annotations

import json

from pgvector import Vector

from lake.errors import StoreUnavailableError
from lake.operations import VectorItem, VectorMatch
from lake.stores.database import Database

__all__ = ["PgVectorStore"]

_UNAVAILABLE = "vector store unavailable: pgvector is not installed on this server"


class PgVectorStore:
    """
    Vectors per tenant and collection in one pgvector table.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False

    async def _require(self) -> None:
        if not self._ready:
            self._ready = await self._db.has_extension("vector")
            if not self._ready:
                raise StoreUnavailableError(_UNAVAILABLE)

    async def upsert(
        self, tenant: str, collection: str, items: list[VectorItem]
    ) -> int:
        """
        Insert or replace ``items``; return how many were written.
        """
        await self._require()
        rows = [
            (
                tenant,
                collection,
                it.id,
                Vector(list(it.vector)),
                json.dumps(it.metadata),
            )
            for it in items
        ]
        async with self._db.transaction(tenant) as conn:
            await conn.executemany(
                "INSERT INTO vectors (tenant_id, collection, id, embedding, metadata)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)"
                " ON CONFLICT (tenant_id, collection, id) DO UPDATE"
                " SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata",
                rows,
            )
        return len(rows)

    async def search(
        self, tenant: str, collection: str, vector: list[float], k: int
    ) -> list[VectorMatch]:
        """
        Return the ``k`` nearest vectors of the same dimension, nearest first.
        """
        await self._require()
        async with self._db.transaction(tenant) as conn:
            rows = await conn.fetch(
                "SELECT id, embedding <=> $3 AS distance, metadata FROM vectors"
                " WHERE tenant_id = $1 AND collection = $2"
                " AND vector_dims(embedding) = $4"
                " ORDER BY distance LIMIT $5",
                tenant,
                collection,
                Vector(vector),
                len(vector),
                k,
            )
        return [
            VectorMatch(
                id=r["id"],
                distance=float(r["distance"]),
                metadata=json.loads(r["metadata"]),
            )
            for r in rows
        ]

    async def ping(self) -> str | None:
        """
        Raise StoreUnavailableError when pgvector is missing; None when usable.
        """
        self._ready = False
        await self._require()
        return None
