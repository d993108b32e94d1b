"""
Schema migrations: versioned SQL files inside the package, applied under a lock.

A file ``NNNN_name.sql`` may start with ``-- requires: ext1, ext2``; when the server
cannot provide one of those extensions (PostgreSQL without pgvector, say), the
migration is skipped and left unrecorded, and the store it serves reports itself
unavailable. Several instances may start at once: a transaction-scoped advisory lock
lets one apply while the others wait, then find nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import structlog

from lake.errors import StoreError
from lake.models import MigrationReport
from lake.stores.database import Database

__all__ = ["Migration", "MigrationReport", "Migrator", "load_migrations"]

log = structlog.get_logger(__name__)

# Any constant shared by all Lake instances; "lake" in ASCII.
_LOCK_KEY = 0x6C616B65
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_REQUIRES = re.compile(r"^--\s*requires:\s*(?P<exts>.+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """
    One versioned SQL file.
    """

    version: int
    name: str
    sql: str
    requires: frozenset[str]

    @property
    def checksum(self) -> str:
        """
        SHA-256 of the SQL, to notice a file edited after it was applied.
        """
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """
    Read the package's migration files in version order.
    """
    found = []
    for entry in resources.files("lake.stores.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        sql = entry.read_text(encoding="utf-8")
        requires = _REQUIRES.search(sql)
        exts = requires["exts"] if requires else ""
        found.append(
            Migration(
                version=int(match["version"]),
                name=match["name"],
                sql=sql,
                requires=frozenset(e.strip() for e in exts.split(",") if e.strip()),
            )
        )
    return sorted(found, key=lambda m: m.version)


class Migrator:
    """
    Applies pending migrations to the database under an advisory lock.
    """

    def __init__(self, db: Database, migrations: list[Migration] | None = None) -> None:
        self._db = db
        self._migrations = load_migrations() if migrations is None else migrations

    async def migrate(self) -> MigrationReport:
        """
        Apply every pending migration whose extensions the server can provide.
        """
        report = MigrationReport()
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS lake_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch("SELECT version, checksum FROM lake_migrations")
            applied = {r["version"]: r["checksum"] for r in rows}
            available = {
                r["name"]
                for r in await conn.fetch("SELECT name FROM pg_available_extensions")
            }
            for migration in self._migrations:
                if migration.version in applied:
                    self._check_unchanged(migration, applied[migration.version])
                    continue
                missing = sorted(migration.requires - available)
                if missing:
                    report.skipped[migration.version] = missing
                    log.warning(
                        "migration_skipped",
                        version=migration.version,
                        missing_extensions=missing,
                    )
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO lake_migrations (version, name, checksum)"
                    " VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                report.applied.append(migration.version)
                log.info(
                    "migration_applied", version=migration.version, name=migration.name
                )
        if report.applied:
            # New types (vector) need their codecs on every pooled connection.
            await self._db.refresh_connections()
        return report

    @staticmethod
    def _check_unchanged(migration: Migration, checksum: str) -> None:
        if checksum != migration.checksum:
            msg = f"migration {migration.version:04d} was edited after it was applied"
            raise StoreError(msg)
