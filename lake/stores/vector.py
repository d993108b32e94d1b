"""
Vector store over pgvector: collections, bulk upsert, filtered top-k, delete.

Each collection is declared once per tenant with a dimension and a metric and gets an
HNSW index of its own: a partial index on ``collection_id``, over the embedding cast
to the collection's dimension. Queries name the collection id and dimension as
literals (integers from Lake's own catalog, never caller text) so that the planner
matches the partial index whatever plan the prepared statement uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from pgvector import Vector

from lake.errors import (
    ConflictError,
    NotFoundError,
    UnsupportedError,
    ValidationError,
)
from lake.models import Collection, VectorItem, VectorMatch, vector_scope
from lake.offload import run_heavy
from lake.stores.database import Database, record_write
from lake.stores.quotas import UNLIMITED, CapsOf, charge

__all__ = ["PgVectorStore"]

_UNAVAILABLE = "vector store unavailable: pgvector is not installed on this server"
_OPS = {
    "cosine": ("vector_cosine_ops", "<=>"),
    "l2": ("vector_l2_ops", "<->"),
    "ip": ("vector_ip_ops", "<#>"),
}
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS lake_vector_stage"
    " (id text, embedding vector, metadata jsonb) ON COMMIT DELETE ROWS"
)


@dataclass(frozen=True, slots=True)
class _Known:
    id: int
    collection: Collection


def _check_dim(dim: int, collection: Collection, where: str) -> None:
    if dim != collection.dim:
        msg = f"has {dim} dimensions; collection {collection.name} has {collection.dim}"
        raise ValidationError(where, msg)


class PgVectorStore:
    """
    Vectors per tenant and collection in pgvector, one HNSW index per collection.
    """

    def __init__(
        self,
        db: Database,
        *,
        default_ef_search: int = 40,
        events: bool = False,
        caps: CapsOf | None = None,
    ) -> None:
        self._db = db
        self._caps = caps or (lambda _: UNLIMITED)
        self._events = events
        self._default_ef_search = default_ef_search
        self._ready = False
        self._known: dict[tuple[str, str], _Known] = {}

    async def _require(self) -> None:
        if not self._ready:
            self._ready = await self._db.has_extension("vector")
            if not self._ready:
                raise UnsupportedError(_UNAVAILABLE)

    async def create_collection(
        self, tenant: str, collection: Collection
    ) -> Collection:
        """
        Declare a collection; declaring the same one again is a no-op.

        Raises:
            ConflictError: a collection of that name exists with another shape.
        """
        await self._require()
        ops, _ = _OPS[collection.metric]
        async with self._db.transaction() as conn:
            # Owner's transaction: index DDL is not lake_app's to run. The tenant is
            # named explicitly in every statement instead.
            row = await conn.fetchrow(
                "INSERT INTO vector_collections (tenant_id, name, dim, metric)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, name) DO NOTHING"
                " RETURNING id",
                tenant,
                collection.name,
                collection.dim,
                collection.metric,
            )
            if row is None:
                existing = await self._fetch(conn, tenant, collection.name)
                if existing is None or existing.collection != collection:
                    msg = f"collection {collection.name!r} exists with another shape"
                    raise ConflictError(msg)
                return collection
            cid = int(row["id"])
            await conn.execute(
                f"CREATE INDEX vector_items_hnsw_{cid} ON vector_items USING hnsw"
                f" ((embedding::vector({collection.dim})) {ops})"
                f" WHERE collection_id = {cid}"
            )
            await charge(conn, tenant, self._caps(tenant), collections=1)
            # A new collection changes what reads of its scope answer (no longer
            # NOT_FOUND): a replica read must wait for it as for any write.
            await record_write(conn, tenant, vector_scope(collection.name))
        self._known[(tenant, collection.name)] = _Known(cid, collection)
        return collection

    @staticmethod
    async def _fetch(conn: Any, tenant: str, name: str) -> _Known | None:
        row = await conn.fetchrow(
            "SELECT id, dim, metric FROM vector_collections"
            " WHERE tenant_id = $1 AND name = $2",
            tenant,
            name,
        )
        if row is None:
            return None
        return _Known(int(row["id"]), Collection(name, row["dim"], row["metric"]))

    async def _lookup(self, tenant: str, name: str) -> _Known:
        """
        The declared collection, from this process's catalog cache or the database.

        Raises:
            NotFoundError: no such collection for this tenant.
        """
        await self._require()
        known = self._known.get((tenant, name))
        if known is None:
            async with self._db.transaction(tenant) as conn:
                known = await self._fetch(conn, tenant, name)
            if known is None:
                msg = f"collection {name!r} does not exist"
                raise NotFoundError(msg)
            self._known[(tenant, name)] = known
        return known

    async def upsert(
        self, tenant: str, collection: str, items: list[VectorItem]
    ) -> int:
        """
        Insert or replace ``items`` by id in one COPY and one merge; idempotent.
        """
        known = await self._lookup(tenant, collection)
        for i, item in enumerate(items):
            _check_dim(len(item.vector), known.collection, f"items[{i}].vector")

        def encode() -> list[tuple[str, Vector, str]]:
            # In id order: two upserts of the same ids lock their rows in the same
            # order, so they queue rather than deadlock.
            return [
                (it.id, Vector(list(it.vector)), json.dumps(it.metadata))
                for it in sorted(items, key=attrgetter("id"))
            ]

        # Building a Vector (a numpy array) costs ~30 us per 1,000 values: a big
        # batch is built on a worker thread so the event loop keeps serving.
        rows = await run_heavy(encode, sum(len(it.vector) for it in items))
        async with self._db.transaction(tenant, prelude=_STAGE) as conn:
            await conn.copy_records_to_table(
                "lake_vector_stage",
                records=rows,
                columns=["id", "embedding", "metadata"],
            )
            # xmax = 0 on a row this statement inserted (not one it replaced): the
            # storage counter counts new ids only, in the same round trip.
            added = await conn.fetchval(
                "WITH merged AS (INSERT INTO vector_items"
                " (tenant_id, collection_id, id, embedding, metadata)"
                " SELECT $1, $2, id, embedding, metadata FROM lake_vector_stage"
                " ON CONFLICT (collection_id, id) DO UPDATE SET"
                " embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata,"
                " updated_at = now() RETURNING (xmax = 0) AS fresh)"
                " SELECT count(*) FILTER (WHERE fresh) FROM merged",
                tenant,
                known.id,
            )
            event = {"collection": collection, "ids": [it.id for it in items]}
            await record_write(
                conn,
                tenant,
                vector_scope(collection),
                ("vectors.upserted", event) if self._events else None,
            )
            await charge(conn, tenant, self._caps(tenant), vectors=int(added))
        self._db.wrote("vector_items", len(rows))
        return len(rows)

    async def search(
        self,
        tenant: str,
        collection: str,
        vector: list[float],
        k: int,
        *,
        where: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
    ) -> list[VectorMatch]:
        """
        The ``k`` nearest items, nearest first, optionally filtered by metadata.

        A filtered search uses pgvector's iterative index scan, so it returns k rows
        when k matching rows exist.
        """
        known = await self._lookup(tenant, collection)
        _check_dim(len(vector), known.collection, "vector")
        _, op = _OPS[known.collection.metric]
        ef = max(ef_search or self._default_ef_search, k)
        settings = {"hnsw.ef_search": str(ef)}
        args: list[Any] = [tenant, Vector(vector), k]
        filter_sql = ""
        if where:
            settings["hnsw.iterative_scan"] = "strict_order"
            args.append(json.dumps(where))
            filter_sql = " AND metadata @> $4::jsonb"
        expr = f"(embedding::vector({known.collection.dim})) {op} $2"
        # Only integers from Lake's catalog and operators from _OPS are interpolated.
        sql = (
            f"SELECT id, {expr} AS distance, metadata FROM vector_items"  # noqa: S608
            f" WHERE collection_id = {known.id} AND tenant_id = $1{filter_sql}"
            f" ORDER BY {expr} LIMIT $3"
        )
        async with self._db.transaction(tenant, settings=settings) as conn:
            rows = await conn.fetch(sql, *args)
        return [
            VectorMatch(
                id=r["id"],
                distance=float(r["distance"]),
                metadata=json.loads(r["metadata"]),
            )
            for r in rows
        ]

    async def delete(self, tenant: str, collection: str, ids: list[str]) -> int:
        """
        Delete items by id; return how many existed.
        """
        known = await self._lookup(tenant, collection)
        async with self._db.transaction(tenant) as conn:
            status = await conn.execute(
                "DELETE FROM vector_items WHERE collection_id = $1 AND id = ANY($2)",
                known.id,
                ids,
            )
            deleted = int(status.split()[-1])
            event = {"collection": collection, "ids": ids, "deleted": deleted}
            await record_write(
                conn,
                tenant,
                vector_scope(collection),
                ("vectors.deleted", event) if self._events else None,
            )
            if deleted:
                await charge(conn, tenant, vectors=-deleted)
        return deleted

    async def ping(self) -> str | None:
        """
        Raise UnsupportedError when pgvector is missing; None when usable.
        """
        self._ready = False
        await self._require()
        await self._db.probe("SELECT 1 FROM vector_items LIMIT 1")
        return None
