"""A real Redis Cluster on loopback: masters with replicas, made by `redis-cli --cluster create`.

Every node is a `RedisServer` (Debian's redis-server, no persistence) with
`--cluster-enabled yes`, in a run folder of its own (its nodes.conf). A
cluster bus listens on each port + 10000, so ports are picked with both
free. `kill_master_of(key)` SIGKILLs the master serving a key's slot and
`wait_promoted` waits until its replica took over, for the fault tests.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from testbed.parts.redisserver import RedisServer
from testbed.parts.service import HOST
from testbed.parts.tlsfiles import TlsFiles
from testbed.proc import TestbedError, run, tcp_port_free, wait_until

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
BUS_OFFSET = 10_000
NODE_TIMEOUT_MS = 1500
"""How long a master may be silent before the cluster fails it over (the fault test waits)."""


def cluster_ports(count: int, host: str = HOST, attempts: int = 200) -> list[int]:
    """`count` ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    for _ in range(attempts):
        port = random.randint(20_000, 55_000)
        if port in ports or port + BUS_OFFSET in ports:
            continue
        if tcp_port_free(host, port) and tcp_port_free(host, port + BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise TestbedError(f"no {count} free port pairs (port, port + {BUS_OFFSET}) on {host}")


class RedisClusterDeployment:
    """`masters` masters with `replicas` replicas each; `password` is every node's."""

    def __init__(
        self,
        run_dir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        tls: TlsFiles | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.tls = tls
        self.masters = masters
        self.replicas = replicas
        self.password = password
        self.timeout = timeout
        ports = cluster_ports(masters * (1 + replicas))
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                 "--cluster-require-full-coverage", "no"]  # fmt: skip
        if password is not None:
            extra += ["--masterauth", password]
        self.nodes = [
            RedisServer(
                self.run_dir / f"node-{port}",
                port,
                password=password,
                acl_users=acl_users,
                extra_args=extra,
                tls=tls,
                timeout=timeout,
            )
            for port in ports
        ]

    @property
    def addresses(self) -> list[str]:
        return [f"{node.host}:{node.port}" for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if self._state_ok():
            return
        argv = [REDIS_CLI, "--cluster", "create", *self.addresses,
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
        if self.password is not None:
            argv += ["--no-auth-warning", "-a", self.password]
        if self.tls is not None:
            argv += ["--tls", "--cacert", str(self.tls.ca)]
        run(argv, what="redis-cli --cluster create", timeout=60.0)
        wait_until(self._state_ok, timeout=self.timeout, what="the Redis cluster to be ok")
        wait_until(self._replicas_synced, timeout=self.timeout, what="the replicas to sync")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> RedisCluster:
        nodes = [
            ClusterNode(n.host, n.port)  # type: ignore[no-untyped-call]
            for n in self.nodes
        ]
        tls: dict[str, Any] = (
            {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls is not None else {}
        )
        return RedisCluster(
            startup_nodes=nodes, password=self.password, decode_responses=True, socket_timeout=5,
            **tls,
        )  # fmt: skip

    def _info(self, node: RedisServer, section: str) -> dict[str, str]:
        """INFO `section` of one node, or CLUSTER INFO for "cluster"; {} if it does not answer."""
        try:
            with node.client() as client:
                if section != "cluster":
                    return {k: str(v) for k, v in client.info(section).items()}
                text = str(client.execute_command("CLUSTER", "INFO"))
        except redis.RedisError:
            return {}
        return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)

    def _state_ok(self) -> bool:
        live = [n for n in self.nodes if n.running]
        return bool(live) and all(
            self._info(n, "cluster").get("cluster_state") == "ok" for n in live
        )

    def _replicas_synced(self) -> bool:
        replicas = [n for n in self.nodes if n.running and self._role(n) == "slave"]
        return len(replicas) >= self.masters * self.replicas and all(
            self._info(n, "replication").get("master_link_status") == "up" for n in replicas
        )

    def _role(self, node: RedisServer) -> str:
        return self._info(node, "replication").get("role", "")

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        with self.client() as cluster:
            target = cluster.get_node_from_key(key)
        for node in self.nodes:
            if node.port == target.port:
                return node
        raise TestbedError(f"no node of this deployment serves {key!r} ({target.name})")

    def kill_master_of(self, key: str) -> RedisServer:
        """SIGKILL the master of `key`'s slot (no persistence: it would come back empty)."""
        victim = self.master_of(key)
        victim.kill()
        return victim

    def wait_promoted(self) -> None:
        """Wait until every slot has a master again: a replica took over the killed one's."""

        def promoted() -> bool:
            masters = [n for n in self.nodes if n.running and self._role(n) == "master"]
            return len(masters) >= self.masters and self._state_ok()

        wait_until(promoted, timeout=self.timeout, what="a replica to be promoted")
