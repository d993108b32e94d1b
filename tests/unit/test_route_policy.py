"""
The cache is used per route only while it pays.
"""

from __future__ import annotations

from lake.stores.cache import RoutePolicy


def drive(policy: RoutePolicy, calls: int, *, hit: bool, lookup: float, load: float):
    """Run ``calls`` calls with fixed outcomes; return how many used the cache."""
    used = 0
    for _ in range(calls):
        if policy.use_cache():
            used += 1
            policy.looked_up(lookup, hit=hit)
            if not hit:
                policy.loaded(load)
        else:
            policy.loaded(load)
    return used


def test_unique_cheap_reads_bypass_the_cache_but_keep_probing():
    """Never hit, load about as cheap as a lookup: mostly bypassed, 1 in 16 probes."""
    policy = RoutePolicy()
    drive(policy, 200, hit=False, lookup=200e-6, load=300e-6)
    assert not policy.pays()
    used = drive(policy, 160, hit=False, lookup=200e-6, load=300e-6)
    assert used == 10  # every 16th call


def test_repeated_reads_keep_the_cache():
    """Mostly hits on an expensive load: the route stays cached."""
    policy = RoutePolicy()
    assert drive(policy, 500, hit=True, lookup=150e-6, load=1e-3) == 500
    assert policy.pays()


def test_a_route_that_starts_repeating_is_cached_again():
    """Probes see hits once the workload repeats, and caching resumes."""
    policy = RoutePolicy()
    drive(policy, 300, hit=False, lookup=200e-6, load=300e-6)
    assert not policy.pays()
    drive(policy, 2000, hit=True, lookup=100e-6, load=300e-6)
    assert policy.pays()


def test_cold_misses_then_repeats_come_back_within_a_few_probes():
    """64 first-touch misses, then every read repeats: the route is cached again
    within five probes (80 calls), not after hundreds."""
    policy = RoutePolicy()
    drive(policy, 64, hit=False, lookup=300e-6, load=900e-6)
    drive(policy, 16, hit=False, lookup=300e-6, load=900e-6)
    assert not policy.pays()
    drive(policy, 80, hit=True, lookup=300e-6, load=900e-6)
    assert policy.pays()
