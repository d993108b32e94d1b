"""
The lease on cache versions: when a process may answer from its copy, and how long
a write waits.
"""

from __future__ import annotations

from lake.stores.lease import PEER_FRESH_S, VersionLease, lease_app_name

KEY = ("t1", "spatial")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warmed(lease_s: float = 0.03) -> tuple[VersionLease, Clock]:
    """A lease past its warm-up, with a baseline poll and KEY known at gen 7."""
    clock = Clock()
    lease = VersionLease(lease_s, clock=clock)
    lease.connected()
    clock.now += PEER_FRESH_S + lease_s
    lease.polled(clock.now, "500", [])  # the baseline
    lease.observed(clock.now, True, {KEY: 7})
    lease.polled(clock.now, "501", [])
    return lease, clock


def test_a_fresh_lease_answers_from_the_copy() -> None:
    """Warmed up, polled just now: the known generation, counted as leased."""
    lease, _ = warmed()
    assert lease.get(KEY) == 7
    assert lease.leased == 1
    assert lease.get(("t1", "other")) is None  # never read: asked for


def test_nothing_is_trusted_during_the_warm_up() -> None:
    """A new connection waits until every writer has counted it."""
    clock = Clock()
    lease = VersionLease(0.03, clock=clock)
    lease.connected()
    lease.polled(clock.now, "500", [])
    lease.observed(clock.now, True, {KEY: 7})
    assert lease.get(KEY) is None
    clock.now += PEER_FRESH_S + 0.03
    lease.polled(clock.now, "501", [])
    assert lease.get(KEY) == 7


def test_a_lease_runs_out_without_polls() -> None:
    """No completed poll sent within 0.8 x lease: the version is asked for."""
    lease, clock = warmed(0.05)
    clock.now += 0.039
    assert lease.get(KEY) == 7
    clock.now += 0.002  # 41 ms after the last poll was sent
    assert lease.get(KEY) is None
    assert not lease.fresh()
    lease.polled(clock.now, "502", [])
    assert lease.get(KEY) == 7


def test_polls_update_known_scopes_only() -> None:
    """A poll's changes replace what is held; scopes never read are not kept."""
    lease, clock = warmed()
    lease.polled(clock.now, "502", [("t1", "spatial", 8), ("t2", "vectors:a", 3)])
    assert lease.get(KEY) == 8
    assert ("t2", "vectors:a") not in lease.known


def test_the_first_poll_only_sets_the_baseline() -> None:
    """Before a baseline, neither poll rows nor batch reads are kept: changes
    between them and the baseline could be missed."""
    clock = Clock()
    lease = VersionLease(0.03, clock=clock)
    lease.connected()
    lease.observed(clock.now, False, {KEY: 7})  # sent before any poll
    lease.polled(clock.now, "500", [("t1", "spatial", 9)])
    clock.now += PEER_FRESH_S + 0.03
    lease.polled(clock.now, "501", [])
    assert lease.get(KEY) is None


def test_own_writes_are_asked_for_until_the_next_poll() -> None:
    """A process's own write: its copy is not used until a poll sent after the
    commit came back (a process alone does not wait on its writes)."""
    lease, clock = warmed()
    lease.counted(0, 0.0, blind=False)
    clock.now += 0.001
    lease.wrote([KEY])
    assert lease.write_wait() == 0.0
    assert lease.get(KEY) is None
    lease.polled(clock.now - 0.0005, "502", [])  # sent before the commit
    assert lease.get(KEY) is None
    clock.now += 0.001
    lease.polled(clock.now, "503", [("t1", "spatial", 8)])
    assert lease.get(KEY) == 8


def test_writes_wait_for_the_longest_lease_among_peers() -> None:
    """Peers counted lately: their longest lease; none: no wait; a blind count
    or a stale one: at least this process's own lease."""
    lease, clock = warmed(0.03)
    lease.counted(2, 0.05, blind=False)
    assert lease.write_wait() == 0.05
    lease.counted(0, 0.0, blind=False)
    assert lease.write_wait() == 0.0
    lease.counted(0, 0.0, blind=True)  # behind a pooler: names say nothing
    assert lease.write_wait() == 0.03
    lease.counted(0, 0.0, blind=False)
    clock.now += PEER_FRESH_S
    assert lease.write_wait() == 0.03


def test_a_lost_connection_trusts_nothing() -> None:
    """After a failure the copy is gone until a new connection warms up."""
    lease, _ = warmed()
    lease.lost()
    assert lease.get(KEY) is None
    assert lease.known == {}


def test_a_lease_of_zero_is_off() -> None:
    """lease_ms = 0: never answered from a copy, writes never wait."""
    clock = Clock()
    lease = VersionLease(0.0, clock=clock)
    lease.connected()
    clock.now += PEER_FRESH_S
    lease.polled(clock.now, "1", [])
    lease.observed(clock.now, True, {KEY: 7})
    assert lease.get(KEY) is None
    assert lease.write_wait() == 0.0
    assert lease_app_name(0.03) == "lake-versions lease=30"


def test_behind_a_pooler_every_write_waits_the_lease() -> None:
    """blind (postgres.pgbouncer): a count of no peers still means waiting."""
    clock = Clock()
    lease = VersionLease(0.03, blind=True, clock=clock)
    lease.counted(0, 0.0, blind=False)
    assert lease.write_wait() == 0.03
