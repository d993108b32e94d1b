"""
Redis modes without a server: the settings of each mode, the clients the factory
builds from them (options, pools, TLS), the failures it turns into misses, and the
key layout a Redis Cluster's hash slots see.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelManagedSSLConnection
from redis.crc import key_slot
from redis.exceptions import MaxConnectionsError

from lake.codec import cache_key
from lake.config import load_settings, masked, secret_values
from lake.errors import ConfigError
from lake.operations import FeaturesNearest, SearchVectors
from lake.quotas import rates
from lake.resources.redis import (
    BlockingSentinelPool,
    ClusterUnavailableError,
    LakeRedisCluster,
    open_redis,
)
from lake.stores import cache
from lake.stores.cache import RedisCache
from lake.validation import check_tenant
from tests import certs

SENTINELS = "redis://127.0.0.1:26379,127.0.0.1:26380,[::1]:26381/2"
CLUSTER = "redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name)


def loaded(monkeypatch, **env: str) -> dict[str, Any]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings("testing")


def refused(monkeypatch, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        loaded(monkeypatch, **env)
    return str(info.value)


# --- settings ---------------------------------------------------------------------


def test_standalone_is_the_default_and_reads_no_sentinel_keys(monkeypatch):
    """No redis.mode: standalone, as before; the sentinel keys stay empty."""
    redis = loaded(monkeypatch)["redis"]
    assert redis["mode"] == "standalone"
    assert redis["sentinel_master"] == redis["sentinel_password"] == ""


def test_sentinel_mode_takes_the_sentinels_and_the_master(monkeypatch):
    """Sentinel mode: the url lists the sentinels, sentinel_master names the
    master; the sentinels' password is a secret like the others (masked, kept out
    of log lines)."""
    values = loaded(
        monkeypatch,
        LAKE_REDIS__MODE="sentinel",
        LAKE_REDIS__URL=SENTINELS,
        LAKE_REDIS__SENTINEL_MASTER="lake",
        LAKE_REDIS__SENTINEL_PASSWORD="s3ntinel-pw",
    )
    assert values["redis"]["mode"] == "sentinel"
    assert masked(values)["redis"]["sentinel_password"] == "***"
    assert "s3ntinel-pw" in secret_values(values)


def test_the_sentinels_password_can_come_from_a_file(monkeypatch, tmp_path):
    """redis.sentinel_password_file, as every secret's *_file."""
    secret = tmp_path / "sentinel-password"
    secret.write_text("from-a-file\n")
    values = loaded(
        monkeypatch,
        LAKE_REDIS__MODE="sentinel",
        LAKE_REDIS__URL=SENTINELS,
        LAKE_REDIS__SENTINEL_MASTER="lake",
        LAKE_REDIS__SENTINEL_PASSWORD_FILE=str(secret),
    )
    assert values["redis"]["sentinel_password"] == "from-a-file"


def test_cluster_mode_takes_seed_nodes_with_or_without_ports(monkeypatch):
    """Cluster mode: the url lists seed nodes (a host without a port is 6379)."""
    values = loaded(monkeypatch, LAKE_REDIS__MODE="cluster", LAKE_REDIS__URL=CLUSTER)
    assert values["redis"]["mode"] == "cluster"


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"LAKE_REDIS__MODE": "replicated"}, "redis.mode", "one of standalone"),
        (
            {"LAKE_REDIS__MODE": "sentinel", "LAKE_REDIS__URL": SENTINELS},
            "redis.sentinel_master",
            "must name the master",
        ),
        (
            {"LAKE_REDIS__MODE": "sentinel", "LAKE_REDIS__SENTINEL_MASTER": "lake"},
            "redis.url",
            "must list the sentinels",
        ),
        ({"LAKE_REDIS__MODE": "cluster"}, "redis.url", "must list the seed nodes"),
        (
            {"LAKE_REDIS__MODE": "cluster", "LAKE_REDIS__URL": "redis://n1:7000/3"},
            "redis.url",
            "database 0 only",
        ),
        (
            {"LAKE_REDIS__MODE": "cluster", "LAKE_REDIS__URL": "unix:///tmp/r.sock"},
            "redis.url",
            "unix socket",
        ),
        (
            {
                "LAKE_REDIS__MODE": "cluster",
                "LAKE_REDIS__URL": "redis://n1:7000?socket_timeout=5",
            },
            "redis.url",
            "takes no ?options",
        ),
        (
            {"LAKE_REDIS__MODE": "cluster", "LAKE_REDIS__URL": "redis://n1:7000,,n2"},
            "redis.url",
            "is not host:port",
        ),
        (
            {"LAKE_REDIS__URL": "redis://n1:7000,n2:7001/0"},
            "redis.url",
            "set redis.mode to sentinel or cluster",
        ),
        (
            {"LAKE_REDIS__SENTINEL_MASTER": "lake"},
            "redis.sentinel_master",
            "sentinel mode only",
        ),
        (
            {"LAKE_REDIS__MODE": "cluster", "LAKE_REDIS__URL": CLUSTER,
             "LAKE_REDIS__SENTINEL_PASSWORD": "pw"},
            "redis.sentinel_password",
            "sentinel mode only",
        ),
    ],
)  # fmt: skip
def test_each_mode_refuses_what_it_cannot_use(monkeypatch, env, key, words):
    """A mode's missing or misplaced key is named, with its variable and why."""
    message = refused(monkeypatch, **env)
    assert f"setting {key} in profile 'testing'" in message
    assert words in message
    assert "pw" not in message.replace("password", "")


def test_a_password_in_a_multi_host_url_is_never_echoed(monkeypatch):
    """A bad port after a password with an unencoded '/' names no part of it."""
    message = refused(
        monkeypatch,
        LAKE_REDIS__MODE="cluster",
        LAKE_REDIS__URL="redis://:se/cret@n1:7000,n2:7001",
    )
    assert "se/cret" not in message
    assert "cret" not in message


# --- the clients each mode builds -----------------------------------------------


async def test_a_sentinel_client_has_a_blocking_pool_and_lakes_options():
    """Sentinel mode: the master's pool is a blocking Sentinel-managed one sized
    max_connections, waiting pool_wait; the url's db and Lake's single try and
    timeouts apply; the sentinels get their own password and the timeouts."""
    async with open_redis(
        url="redis://:node-pw@127.0.0.1:1,127.0.0.1:2/3",
        mode="sentinel",
        sentinel_master="lake",
        sentinel_password="sentinel-pw",
        socket_timeout=0.2,
        max_connections=7,
        pool_wait=0.03,
    ) as client:
        assert isinstance(client, aioredis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        assert isinstance(pool, aioredis.BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (7, 0.03)
        kwargs = pool.connection_kwargs
        assert kwargs["db"] == 3
        assert kwargs["password"] == "node-pw"  # the url's, as in standalone
        assert kwargs["socket_timeout"] == 0.2
        assert kwargs["retry"].get_retries() == 0
        sentinels = pool.sentinel_manager.sentinels
        assert len(sentinels) == 2
        watcher = sentinels[0].connection_pool.connection_kwargs
        assert watcher["password"] == "sentinel-pw"
        assert watcher["socket_timeout"] == 0.2


async def test_a_full_sentinel_pool_waits_then_reads_as_busy():
    """Past max_connections a call waits pool_wait, then fails as redis-py's
    blocking pool does, which the cache counts as busy (never as Redis failing)."""
    async with open_redis(
        url="redis://127.0.0.1:1",
        mode="sentinel",
        sentinel_master="lake",
        max_connections=1,
        pool_wait=0.02,
    ) as client:
        assert isinstance(client, aioredis.Redis)
        pool = client.connection_pool
        pool._available_connections.clear()  # the start-up ping's, idle
        pool._in_use_connections.add(pool.make_connection())  # the one, lent out
        with pytest.raises(aioredis.ConnectionError) as info:
            await pool.get_connection()
        assert cache._pool_busy(info.value)
        assert rates._pool_busy(info.value)


async def test_a_cluster_client_makes_one_try_with_lakes_options():
    """Cluster mode: every seed node, one try, Lake's timeouts, max_connections
    per node, and a cluster that need not cover every slot to be used."""
    async with open_redis(
        url="redis://:node-pw@127.0.0.1:1,127.0.0.1:2",
        mode="cluster",
        socket_timeout=0.2,
        max_connections=9,
    ) as client:
        assert isinstance(client, LakeRedisCluster)
        assert [n.name for n in client.startup_nodes] == [
            "127.0.0.1:1",
            "127.0.0.1:2",
        ]
        assert client.retry.get_retries() == 0
        assert client.nodes_manager.require_full_coverage is False
        kwargs = client.connection_kwargs
        assert (kwargs["password"], kwargs["socket_timeout"]) == ("node-pw", 0.2)
        assert kwargs["max_connections"] == 9


async def test_a_cluster_nobody_answers_is_a_redis_error_and_a_miss():
    """No seed node answers: RedisCluster's own exception (not a RedisError)
    comes out as ClusterUnavailableError, so the cache misses instead of failing
    the call, and a full node counts as busy."""
    async with open_redis(url="redis://127.0.0.1:1", mode="cluster") as client:
        with pytest.raises(ClusterUnavailableError) as info:
            await client.get("k")
        assert isinstance(info.value, aioredis.ConnectionError)
        reads = RedisCache(client, timeout=1.0)
        assert await reads.get("k") is None
        assert reads.errors == 1
    assert cache._pool_busy(MaxConnectionsError())
    assert rates._pool_busy(MaxConnectionsError())


async def test_rediss_means_tls_for_sentinels_masters_and_cluster_nodes(tmp_path):
    """A rediss:// url in the HA modes: TLS connections, verified (required, host
    name checked, the CA pinned), for the sentinels as well as the master."""
    ca = certs.write_ca(trustme.CA(), tmp_path / "ca.pem")
    async with open_redis(
        url="rediss://127.0.0.1:1",
        mode="sentinel",
        sentinel_master="m",
        ssl_ca_file=str(ca),
    ) as client:
        assert isinstance(client, aioredis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        assert pool.connection_class is SentinelManagedSSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
        assert pool.connection_kwargs["ssl_check_hostname"] is True
        watcher = pool.sentinel_manager.sentinels[0].connection_pool
        assert watcher.connection_kwargs["ssl_ca_certs"] == str(ca)
        assert watcher.connection_class.__name__ == "SSLConnection"
    async with open_redis(
        url="rediss://127.0.0.1:1", mode="cluster", ssl_ca_file=str(ca)
    ) as node:
        assert isinstance(node, RedisCluster)
        kwargs = node.connection_kwargs
        assert kwargs["connection_class"].__name__ == "SSLConnection"
        assert (kwargs["ssl_ca_certs"], kwargs["ssl_check_hostname"]) == (str(ca), True)


# --- key layout -------------------------------------------------------------------


def _quota_keys(storage: RedisStorage, *ids: str) -> list[str]:
    key = RateLimitItemPerSecond(6, 60).key_for(*ids)
    return [
        storage.bridge.prefixed_key(storage._current_window_key(key)),
        storage.bridge.prefixed_key(storage._previous_window_key(key)),
    ]


def test_a_quota_windows_two_keys_share_one_hash_slot():
    """The sliding window's script renames one key onto the other: limits wraps
    the limiter key in a hash tag, so both land in one slot of a cluster, under
    Lake's prefix; a tenant id cannot carry braces that would move the tag."""
    client = LakeRedisCluster(host="127.0.0.1", port=1)
    storage = rates.quota_storage(client)
    assert isinstance(storage.bridge, RedispyBridge)
    assert storage.bridge.get_connection() is client  # Lake's client, not a copy
    for tenant in ("acme", "t-1", "x" * 63):
        current, previous = _quota_keys(storage, "ns0123", tenant, "read")
        assert current.startswith("lake:quota:{")
        assert key_slot(current.encode()) == key_slot(previous.encode())
    with pytest.raises(ValueError, match="tenant"):
        check_tenant("a{b}")


def test_standalone_quotas_share_lakes_pool():
    """Standalone (and sentinel, whose client has a pool too): limits runs over
    Lake's own connection pool, as before."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:1")
    bridge = rates.quota_storage(client).bridge
    assert isinstance(bridge, RedispyBridge)
    shared = bridge.get_connection()
    assert isinstance(shared, aioredis.Redis)
    assert shared.connection_pool is client.connection_pool


def test_cache_keys_carry_no_hash_tag_so_they_spread_over_the_cluster():
    """Every cache command is one key: no hash tag, so a tenant's entries spread
    over every master (a tag per tenant would put a big tenant on one node)."""
    keys = [
        cache_key("acme", "spatial", FeaturesNearest("acme", 2.35, 48.85 + i / 10, 5))
        for i in range(200)
    ]
    keys.append(cache_key("acme", "vectors:docs", SearchVectors("acme", "docs", [1.0])))
    assert not any("{" in k or "}" in k for k in keys)
    slots = {key_slot(k.encode()) // (16384 // 3 + 1) for k in keys}
    assert slots == {0, 1, 2}  # each third of the slots (each master) gets some
