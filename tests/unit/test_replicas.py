"""
Read-replica routing decided with fakes: the real container, its stores, pools
and replicas overridden; fences fed by a fake primary, replicas polled through
fake connections, every check driven by the test (no background loop).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from lake.config import load_settings, masked, secret_values
from lake.container import aresolve, create_container
from lake.errors import ConfigError, StoreUnavailableError, ValidationError
from lake.health import Status
from lake.manager import ServiceManager
from lake.metrics import ReplicaSource
from lake.models import Feature
from lake.operations import FeaturesNearest, UpsertFeatures
from lake.poolmetrics import PoolMetrics
from lake.protection import Protection
from lake.resources.replicas import open_replicas
from lake.stores.cache import CachedReads
from lake.stores.database import Database, read_lane
from lake.stores.fences import FenceBook, lsn_text
from lake.stores.replicas import LagClock, Replica, ReplicaSet, RoutedReads
from tests.fakes import (
    FakeCache,
    FakeDatabase,
    FakeMesh,
    FakeMigrator,
    FakeQuotas,
    FakeRelay,
    FakeResource,
    FakeSpatialStore,
    FakeTimeSeriesStore,
    FakeVectorStore,
)

TENANT = "t1"


class FakeConn:
    """A check connection: answers what the test set, or fails."""

    def __init__(self, row: Any = None) -> None:
        self.row = row
        self.failure: Exception | None = None

    def is_closed(self) -> bool:
        return False

    async def fetchrow(self, sql: str) -> Any:
        if self.failure is not None:
            raise self.failure
        return self.row

    async def fetchval(self, sql: str) -> Any:
        if self.failure is not None:
            raise self.failure
        return self.row

    def terminate(self) -> None:
        pass


class FakePool:
    def get_size(self) -> int:
        return 0

    get_idle_size = get_min_size = get_size

    def get_max_size(self) -> int:
        return 4


class Standby:
    """A fake replica: in recovery, replayed up to ``replayed``."""

    def __init__(self, replayed: int = 100) -> None:
        self.conn = FakeConn((True, replayed))

    def replay(self, position: int, *, standby: bool = True) -> None:
        self.conn.row = (standby, position)

    async def connect(self) -> FakeConn:
        return self.conn


class FencedDatabase(FakeDatabase):
    """The primary as the router sees it: each version read is a batch that
    feeds the fence book with the primary's current position."""

    def __init__(self, book: FenceBook) -> None:
        super().__init__()
        self.book = book
        self.position = 100

    async def cache_version(self, tenant: str, scope: str) -> str:
        gen = self.generations.get((tenant, scope), 0)
        batch = self.book.begin_batch()
        self.book.record(batch, self.position, {(tenant, scope): gen})
        return f"fake:{gen}"


class LaneSpatial(FakeSpatialStore):
    """Records where each read ran (a replica's lane, or None: the primary);
    with ``fail_on_replica`` a read on a replica fails."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: list[object] = []
        self.fail_on_replica: Exception | None = None

    async def nearest(self, tenant: str, lon: float, lat: float, k: int) -> Any:
        lane = read_lane.get()
        self.lanes.append(lane)
        if lane is not None and self.fail_on_replica is not None:
            raise self.fail_on_replica
        return await super().nearest(tenant, lon, lat, k)


class Rig:
    """A started Lake whose one replica and primary are fakes."""

    def __init__(self, manager: ServiceManager, replicas: ReplicaSet, **fakes: Any):
        self.manager = manager
        self.set = replicas
        self.replica = replicas.replicas[0]
        self.standby: Standby = fakes["standby"]
        self.primary: FakeConn = fakes["primary"]
        self.database: FencedDatabase = fakes["database"]
        self.spatial: LaneSpatial = fakes["spatial"]
        self.reads = 0

    async def check(self, *, primary: int, replayed: int) -> None:
        self.primary.row = primary
        self.standby.replay(replayed)
        await self.set.check()

    async def read(self) -> str:
        """One nearest read (a new point: a cache miss); where it ran."""
        self.reads += 1
        op = FeaturesNearest(TENANT, lon=1.0 + self.reads * 1e-3, lat=45.0, k=1)
        (found,) = await self.manager.coordinate(op)
        assert found.feature.id == "p"
        return "primary" if self.spatial.lanes[-1] is None else "replica"


def replica_settings(settings: dict[str, Any], **postgres: Any) -> dict[str, Any]:
    settings["postgres"]["replica_dsns"] = ["postgresql://lake@127.0.0.1:2/lake"]
    settings["postgres"].update(postgres)
    return settings


@pytest.fixture
async def rig(settings):
    container = create_container(replica_settings(settings))
    book = container.fences()
    protection = container.protection()
    standby, primary = Standby(), FakeConn(100)
    replica = Replica(
        "1",
        "127.0.0.1:2",
        Database(FakePool(), guard=protection.replica("1"), pool_metrics=PoolMetrics()),
        protection.replica("1"),
        standby.connect,
    )

    async def connect_primary() -> FakeConn:
        return primary

    replica_set = ReplicaSet([replica], primary=connect_primary, max_lag=1.0)
    fakes = {
        "database": FencedDatabase(book),
        "spatial": LaneSpatial(),
        "cache": FakeCache(),
        "vectors": FakeVectorStore(),
        "series": FakeTimeSeriesStore(),
        "migrator": FakeMigrator(),
        "relay": FakeRelay(),
        "quotas": FakeQuotas(),
    }
    for name, fake in fakes.items():
        getattr(container, name).override(fake)
    for name, value in (
        ("pg_pool", None),
        ("redis", None),
        ("mesh_client", FakeMesh()),
        ("replicas", replica_set),
    ):
        provider = getattr(container, name)
        provider.override(type(provider)(FakeResource(name, value=value)))
        provider.enable_async_mode()
    manager: ServiceManager = await aresolve(container.manager)
    await manager.start()
    await manager.coordinate(UpsertFeatures(TENANT, [Feature("p", 1.0, 45.0)]))
    try:
        yield Rig(manager, replica_set, standby=standby, primary=primary, **fakes)
    finally:
        await manager.stop()


async def test_without_replicas_reads_are_the_cache_alone(settings):
    """No replica_dsns: the read path is CachedReads itself and there is no replica
    component (nothing added to a read)."""
    container = create_container(settings)
    container.cache.override(FakeCache())
    container.database.override(FakeDatabase())
    reads = await aresolve(container.reads)  # opens the replicas resource: None
    assert type(reads) is CachedReads
    assert await aresolve(container.replicas) is None
    closing = container.replicas.shutdown()
    assert closing is not None
    await closing
    async with open_replicas(dsns=[], primary_dsn="") as nothing:
        assert nothing is None


async def test_a_read_runs_on_a_replica_that_replayed_its_fence(rig):
    """The replica has replayed what the primary had when the scope was read: the
    read runs in its lane; health UP with the lag as latency; status shows it."""
    await rig.check(primary=100, replayed=100)
    assert rig.replica.in_rotation
    assert await rig.read() == "replica"
    assert rig.set.routed["replica"] == 1
    assert rig.replica.reads == 1
    component = (await rig.manager.health()).component("postgres.replica.1")
    assert (component.status, component.latency_ms) == (Status.UP, 0.0)
    node = (await rig.manager.status()).as_dict()["replicas"]["nodes"]["1"]
    assert (node["state"], node["replayed"], node["host"]) == (
        "in",
        "0/64",
        "127.0.0.1:2",
    )


async def test_a_scope_changed_past_the_replay_is_read_on_the_primary(rig):
    """The scope's generation changed when the primary was at 200 and the replica
    has replayed 150: the primary serves; replayed to 200, the replica does."""
    await rig.check(primary=150, replayed=150)
    rig.database.position = 200
    rig.database.generations[(TENANT, "spatial")] = 7
    assert await rig.read() == "primary"
    assert rig.set.routed["recent_write"] == 1
    await rig.check(primary=200, replayed=200)
    assert await rig.read() == "replica"


async def test_a_standing_generation_keeps_its_first_fence(rig):
    """While the scope's generation stands, its fence stays where it was first
    seen, however far the primary moves on (other scopes' writes); a new
    generation takes the primary's position then."""
    await rig.check(primary=100, replayed=100)
    assert await rig.read() == "replica"  # generation 0 first seen at 100
    rig.database.position = 500
    assert await rig.read() == "replica"
    rig.database.generations[(TENANT, "spatial")] = 3
    assert await rig.read() == "primary"


async def test_a_failing_replica_read_falls_back_to_the_primary(rig):
    """A replica read that fails (its connection lost, say) is answered by the
    primary: the caller sees no error; the fallback is counted."""
    await rig.check(primary=100, replayed=100)
    rig.spatial.fail_on_replica = StoreUnavailableError("database connection failed")
    assert await rig.read() == "primary"
    assert rig.set.routed["fallback"] == 1
    assert rig.replica.fallbacks == 1
    assert rig.spatial.lanes[-2] is not None  # it was tried on the replica first


async def test_a_replica_refusing_the_fence_is_not_chosen_again_until_checked(rig):
    """The replica's own check refused the read (22012: it had not replayed the
    fence after all, restarted since the last check): the primary answers, and
    the replica waits for its next check."""
    await rig.check(primary=100, replayed=100)
    refused = ValidationError("request", "out of range")
    rig.spatial.fail_on_replica = refused.with_detail(
        "sqlstate 22012 (division_by_zero)"
    )
    assert await rig.read() == "primary"
    rig.spatial.fail_on_replica = None
    assert await rig.read() == "primary"
    assert rig.set.routed["recent_write"] == 1
    await rig.check(primary=100, replayed=100)
    assert await rig.read() == "replica"


async def test_a_lagging_replica_leaves_and_returns_once_half_the_limit_behind(rig):
    """Five seconds behind (limit 1 s): out, health DEGRADED with the reason,
    reads on the primary; 0.7 s behind: still out (catching up); caught up: in."""
    await rig.check(primary=100, replayed=100)
    now = time.monotonic()
    rig.set.clock.add(now - 5.0, 150)
    await rig.check(primary=200, replayed=150)
    assert (rig.replica.state, rig.replica.in_rotation) == ("lagging", False)
    assert rig.replica.lag_s == pytest.approx(5.0, abs=0.5)
    component = (await rig.manager.health()).component("postgres.replica.1")
    assert component.status is Status.DEGRADED
    assert component.reason.startswith("out of rotation: 5.")
    assert component.latency_ms == pytest.approx(5000, abs=500)
    assert await rig.read() == "primary"
    assert rig.set.routed["no_replica"] == 1
    rig.set.clock.add(time.monotonic() - 0.7, 300)
    await rig.check(primary=400, replayed=300)
    assert not rig.replica.in_rotation
    assert rig.replica.reason.startswith("catching up")
    await rig.check(primary=400, replayed=400)
    assert rig.replica.in_rotation
    assert await rig.read() == "replica"


async def test_a_dead_or_promoted_replica_is_out(rig):
    """A replica that refuses connections is down (health DEGRADED, not DOWN: Lake
    stays ready); one out of recovery (promoted) is out too."""
    await rig.check(primary=100, replayed=100)
    rig.standby.conn.failure = ConnectionRefusedError()
    await rig.set.check()
    assert (rig.replica.state, rig.replica.reason) == ("down", "connection refused")
    report = await rig.manager.health()
    assert report.component("postgres.replica.1").status is Status.DEGRADED
    assert report.ready
    assert await rig.read() == "primary"
    rig.standby.conn.failure = None
    rig.standby.replay(100, standby=False)
    await rig.set.check()
    assert rig.replica.state == "not a standby"
    rig.standby.replay(100)
    await rig.set.check()
    assert rig.replica.in_rotation


async def test_no_primary_sample_leaves_the_rotation_as_it_is(rig):
    """A round without the primary's position measures no lag: the replica stays in
    (its fences still hold), and the lag is not invented."""
    await rig.check(primary=100, replayed=100)
    rig.primary.failure = OSError("unreachable")
    rig.standby.replay(100)
    await rig.set.check()
    assert rig.replica.in_rotation
    rig.primary.failure = None


async def test_replica_metrics(rig):
    """The lag gauge, the rotation gauge and the read routes counter."""
    await rig.check(primary=100, replayed=100)
    await rig.read()
    families = {f.name: f for f in ReplicaSource(rig.manager).collect()}
    assert families["lake_replica_in_rotation"].samples[0].value == 1
    assert families["lake_replica_lag_seconds"].samples[0].value == 0.0
    routes = {s.labels["route"]: s.value for s in families["lake_read_routes"].samples}
    assert routes["replica"] == 1


def test_fence_book_counts_only_batches_after_the_mark():
    """A batch begun at or before a read's mark says nothing about the read."""
    book = FenceBook()
    batch = book.begin_batch()
    mark = book.mark()
    book.record(batch, 10, {("t", "s"): 1})
    assert book.fence("t", "s", mark) is None
    book.record(book.begin_batch(), 20, {("t", "s"): 1})
    assert book.fence("t", "s", mark) == 10  # the generation's first fence
    book.record(book.begin_batch(), 30, {("t", "s"): 2})
    assert book.fence("t", "s", mark) == 30


def test_fence_book_forgets_the_least_recent_scopes():
    """Past its capacity a scope is forgotten; seen again, it gets a new fence."""
    book = FenceBook(capacity=2)
    for n, scope in enumerate("abc"):
        book.record(book.begin_batch(), n, {("t", scope): 1})
    assert book.stats()["scopes"] == 2
    assert book.fence("t", "a", 0) is None


def test_lag_clock():
    """Caught up with the newest sample: 0 (an idle primary too); between samples:
    interpolated; before the oldest: at least that old; a lower position (another
    primary) starts again."""
    clock = LagClock()
    assert clock.lag(0, 10.0) is None
    clock.add(10.0, 100)
    clock.add(12.0, 300)
    assert clock.lag(300, 20.0) == 0.0
    assert clock.lag(200, 12.0) == pytest.approx(1.0)
    assert clock.lag(50, 13.0) == pytest.approx(3.0)
    clock.add(14.0, 40)
    assert clock.lag(40, 14.5) == 0.0
    assert lsn_text(0x16_B374D848) == "16/B374D848"


def test_replica_settings_are_checked_and_masked(monkeypatch):
    """replica_dsns takes postgresql URLs, the check interval must be shorter than
    the lag limit, and a password in a replica URL is masked and redacted."""
    monkeypatch.setenv("LAKE_POSTGRES__REPLICA_DSNS", '["redis://h:1/0"]')
    with pytest.raises(ConfigError, match=r"replica_dsns .*entry 1"):
        load_settings("testing")
    monkeypatch.setenv("LAKE_POSTGRES__REPLICA_DSNS", '["postgresql://u:s3cret@h:5/d"]')
    monkeypatch.setenv("LAKE_POSTGRES__REPLICA_CHECK_INTERVAL", "1.5")
    with pytest.raises(ConfigError, match="replica_check_interval"):
        load_settings("testing")
    monkeypatch.delenv("LAKE_POSTGRES__REPLICA_CHECK_INTERVAL")
    values = load_settings("testing")
    assert "s3cret" in secret_values(values)
    assert masked(values)["postgres"]["replica_dsns"] == ["postgresql://u:***@h:5/d"]


def test_replicas_get_their_own_breakers():
    """Each replica has a breaker of its own, listed with the other dependencies."""
    protection = Protection()
    assert protection.replica("1") is protection.replica("1")
    assert protection.replica("1").breaker is not protection.postgres.breaker
    names = [d.name for d in protection.dependencies()]
    assert "postgres.replica.1" in names


async def test_routed_reads_route_uncached_reads_too(rig):
    """A read the cache never keeps (SearchText's shape) is routed like the rest."""
    await rig.check(primary=100, replayed=100)
    reads = rig.manager.components.reads
    assert isinstance(reads, RoutedReads)

    async def load() -> object:
        return read_lane.get()

    assert await reads.uncached(TENANT, "spatial", load) is not None
