"""
Start-up, migrations, health and shutdown against real PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from lake.container import aresolve, create_container
from lake.errors import (
    LifecycleError,
    ResourceExhaustedError,
    StoreError,
    StoreUnavailableError,
    UnsupportedError,
)
from lake.health import Status
from lake.logs import configure_logging, register_secrets
from lake.manager import State
from lake.resources.postgres import open_pg_pool
from lake.stores.database import Database
from lake.stores.migrate import Migration, Migrator, load_migrations
from lake.stores.vector import PgVectorStore
from tests.servers import live_settings


async def test_health_is_up_on_real_servers(manager):
    """Every component is UP and Lake is ready."""
    report = await manager.health()
    assert {c.name: c.status for c in report.components} == {
        "postgres": Status.UP,
        "redis": Status.UP,
        "timeseries": Status.UP,
        "spatial": Status.UP,
        "vectors": Status.UP,
        "quotas": Status.UP,
        "event_loop": Status.UP,
    }
    assert report.ready
    assert report.status is Status.UP


async def test_stop_is_idempotent_and_closes_the_pool(container, manager):
    """After stop the pool is closed; a second stop is a no-op."""
    db = await container.database()
    await manager.stop()
    await manager.stop()
    assert manager.state is State.STOPPED
    with pytest.raises(StoreUnavailableError):
        await db.ping()


async def test_second_start_on_the_same_database_applies_nothing(lake_settings):
    """Migrations are recorded: a second instance finds nothing left to do."""
    for expected_tables in (True, True):
        mgr = await aresolve(create_container(lake_settings).manager)
        await mgr.start()
        await mgr.stop()
        assert expected_tables
    async with open_pg_pool(
        dsn=lake_settings["postgres"]["dsn"],
        password=lake_settings["postgres"]["password"],
    ) as pool:
        rows = await pool.fetch("SELECT version FROM lake_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in load_migrations()]


async def test_concurrent_instances_migrate_once(lake_settings):
    """Four instances starting at once apply each migration exactly once."""
    pg = lake_settings["postgres"]
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"], max_size=8) as pool:
        db = Database(pool)
        reports = await asyncio.gather(*(Migrator(db).migrate() for _ in range(4)))
        applied = [v for r in reports for v in r.applied]
        assert sorted(applied) == [m.version for m in load_migrations()]
        count = await pool.fetchval("SELECT count(*) FROM lake_migrations")
    assert count == len(load_migrations())


async def test_missing_extension_skips_its_migration_and_store_reports_it(
    lake_settings,
):
    """A migration whose extension the server lacks is skipped, unrecorded."""
    pg = lake_settings["postgres"]
    needs_missing = Migration(
        99, "needs_missing", "SELECT 1", frozenset({"no_such_ext"})
    )
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"]) as pool:
        db = Database(pool)
        # Before any migration the vector store is unavailable, not broken.
        with pytest.raises(UnsupportedError, match="pgvector"):
            await PgVectorStore(db).ping()
        report = await Migrator(db, [*load_migrations(), needs_missing]).migrate()
        assert report.skipped == {99: ["no_such_ext"]}
        assert 99 not in report.applied
        recorded = await pool.fetchval(
            "SELECT count(*) FROM lake_migrations WHERE version = 99"
        )
    assert recorded == 0


async def test_edited_migration_is_refused(lake_settings):
    """A migration changed after it was applied stops start-up with a clear error."""
    pg = lake_settings["postgres"]
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"]) as pool:
        db = Database(pool)
        await Migrator(db).migrate()
        edited = [
            Migration(m.version, m.name, m.sql + "\n-- edited", m.requires)
            for m in load_migrations()
        ]
        with pytest.raises(StoreError, match="0001 was edited"):
            await Migrator(db, edited).migrate()


async def test_unreachable_postgres_fails_start_and_leaves_no_redis_connection(servers):
    """PostgreSQL down at start: bounded retries, one clear error, Redis closed."""
    settings = live_settings(servers, "postgresql://postgres@127.0.0.1:1/postgres")
    probe = aioredis.Redis.from_url(
        servers["redis"].url, password=servers["redis"].password
    )
    before = (await probe.info("clients"))["connected_clients"]
    mgr = await aresolve(create_container(settings).manager)
    with pytest.raises(LifecycleError, match="start-up failed: database refused"):
        await mgr.start()
    after = (await probe.info("clients"))["connected_clients"]
    await probe.aclose()
    assert after == before
    assert mgr.state is State.STOPPED


async def test_wrong_password_is_in_no_log_line_and_not_retried(servers, database):
    """A rejected password fails start-up at once; the password appears nowhere."""
    password = "Kn0wn-Wr0ng-Passw0rd"
    settings = live_settings(servers, database)
    settings["postgres"]["password"] = password
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    register_secrets([password])
    mgr = await aresolve(create_container(settings).manager)
    with pytest.raises(LifecycleError) as info:
        await mgr.start()
    assert "rejected the credentials" in str(info.value)
    assert password not in str(info.value)
    assert password not in stream.getvalue()
    assert "retrying" not in stream.getvalue()


async def test_password_inside_the_dsn_is_in_no_log_line(servers):
    """A DSN with an inline password that cannot connect leaks it nowhere."""
    password = "Inl1ne-Secret-In-DSN"
    settings = live_settings(servers, f"postgresql://lake:{password}@127.0.0.1:1/lake")
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    mgr = await aresolve(create_container(settings).manager)
    with pytest.raises(LifecycleError) as info:
        await mgr.start()
    assert password not in str(info.value)
    logged = stream.getvalue()
    assert "retrying" in logged  # the failure was transient and was logged
    assert password not in logged


async def test_role_without_rights_gets_a_redacted_error(servers, database):
    """A database error from a real server surfaces without SQL or driver names."""
    pg = servers["postgres"]
    conn = await asyncpg.connect(database, password=pg.password or None)
    await conn.close()
    async with open_pg_pool(dsn=database, password=pg.password) as pool:
        db = Database(pool)
        with pytest.raises(StoreError) as info:
            async with db.transaction() as c:
                await c.execute("SELECT * FROM no_such_table")
    assert str(info.value) == "database error"


async def test_server_without_pgvector_serves_the_rest(lake_settings):
    """Without pgvector the vector store is DOWN, Lake is DEGRADED but ready."""
    from dependency_injector import providers

    from lake.operations import (
        Point,
        QueryPoints,
        SearchVectors,
        UpsertVectors,
        VectorItem,
        WritePoints,
    )

    # As on PostgreSQL 15 without pgvector: the vector migration's extension is absent.
    without_vector = [
        Migration(
            m.version,
            m.name,
            m.sql,
            m.requires | {"pgvector_absent"} if "vector" in m.requires else m.requires,
        )
        for m in load_migrations()
    ]
    container = create_container(lake_settings)
    container.migrator.override(
        providers.Singleton(Migrator, container.database, without_vector)
    )
    manager = await aresolve(container.manager)
    await manager.start()
    try:
        report = await manager.health()
        vectors = report.component("vectors")
        assert vectors.status is Status.DOWN
        assert "pgvector" in vectors.reason
        assert report.ready
        assert report.status is Status.DEGRADED
        with pytest.raises(UnsupportedError, match="pgvector"):
            await manager.coordinate(
                UpsertVectors("t1", "docs", [VectorItem("a", [1.0])])
            )
        with pytest.raises(UnsupportedError):
            await manager.coordinate(SearchVectors("t1", "docs", [1.0]))
        t0 = datetime.now(UTC) - timedelta(hours=1)
        await manager.coordinate(WritePoints("t1", "m", [Point(t0, 1.0)]))
        got = await manager.coordinate(
            QueryPoints("t1", "m", t0, t0 + timedelta(hours=1))
        )
        assert [p.value for p in got.points] == [1.0]
    finally:
        await manager.stop()


async def test_exhausted_pool_answers_resource_exhausted_in_time(lake_settings):
    """With every connection held, an acquire gives up after its timeout."""
    pg = lake_settings["postgres"]
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"], max_size=1) as pool:
        db = Database(pool, acquire_timeout=0.2)
        async with db.connection():
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ResourceExhaustedError, match="no database connection"):
                async with db.connection():
                    pass
            assert loop.time() - started < 1.0
        assert db.metrics()["acquire_timeouts"] == 1
        async with db.connection() as conn:  # released: usable again
            assert await conn.fetchval("SELECT 1") == 1


async def test_statement_timeout_follows_the_callers_deadline(lake_settings):
    """Within a deadline, PostgreSQL itself stops a statement when the time is up."""
    from lake.deadline import deadline_scope
    from lake.errors import DeadlineExceededError

    pg = lake_settings["postgres"]
    async with open_pg_pool(dsn=pg["dsn"], password=pg["password"]) as pool:
        db = Database(pool)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with deadline_scope(0.3), pytest.raises(DeadlineExceededError):
            async with db.transaction() as conn:
                await conn.execute("SELECT pg_sleep(3)")
        assert loop.time() - started < 1.5
        async with db.transaction() as conn:  # the connection is fine afterwards
            assert await conn.fetchval("SELECT 1") == 1
