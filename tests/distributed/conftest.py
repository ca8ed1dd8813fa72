"""Real distributed deployments for the shared-state tests: a Sentinel set and a Cluster.

Each runs from Debian's binaries on loopback ports, once per module and
kind: one master + one replica + three sentinels (`redis-sentinel`), and a
3-master cluster with a replica each (`redis-cli --cluster create`). The
milters log in to the data nodes as an ACL user, the sentinels require a
password of their own: AUTH and ACLs work in both modes. Two milter daemons (two relays) use each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.store import keys
from aupmilter.store.client import connect
from testbed.dnsserver import DnsServer
from testbed.parts.rediscluster import RedisClusterDeployment
from testbed.parts.redissentinel import SERVICE_NAME, SentinelDeployment
from tests.milter.harness import Daemon, daemon_settings, short_tempdir
from tests.support import STARTUP_TIMEOUT

DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
MILTER_USER = ["milter on >milter-secret ~aup:* +@all"]
"""The milters' ACL user on the data nodes (the default user is the replication's)."""


@dataclass
class Deployment:
    """One distributed Redis, as the milter's `[redis]` section names it."""

    kind: str
    redis_section: dict[str, Any]
    parts: SentinelDeployment | RedisClusterDeployment

    @property
    def settings(self) -> RedisSettings:
        section = self.redis_section
        return RedisSettings(
            url=section["url"],
            connect_timeout=2.0,
            timeout=5.0,
            sentinels=tuple(_node(n) for n in section.get("sentinels", ())),
            service_name=section.get("service_name", ""),
            sentinel_password=section.get("sentinel_password"),
            cluster_nodes=tuple(_node(n) for n in section.get("cluster_nodes", ())),
        )

    def client(self) -> redis.Redis:
        """An admin client as the milter's tools make it (and the key layout with it)."""
        return connect(self.settings)

    def flush(self) -> None:
        """Every node's data gone, as after a restart without persistence."""
        nodes = (
            self.parts.nodes
            if isinstance(self.parts, RedisClusterDeployment)
            else [self.parts.current_master()]
        )
        for node in nodes:
            with node.client() as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()


def _node(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    run_dir = Path(tmp_path_factory.mktemp(request.param))
    parts: SentinelDeployment | RedisClusterDeployment
    if request.param == "sentinel":
        parts = SentinelDeployment(
            run_dir, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD,
            acl_users=MILTER_USER, timeout=STARTUP_TIMEOUT,
        )  # fmt: skip
        section: dict[str, Any] = {
            "url": "redis://milter:milter-secret@/0",
            "sentinels": parts.addresses,
            "service_name": SERVICE_NAME,
            "sentinel_password": SENTINEL_PASSWORD,
        }
    else:
        parts = RedisClusterDeployment(
            run_dir, password=DATA_PASSWORD, acl_users=MILTER_USER, timeout=STARTUP_TIMEOUT
        )
        section = {"url": "redis://milter:milter-secret@", "cluster_nodes": parts.addresses[:2]}
    parts.start()
    try:
        yield Deployment(request.param, section, parts)
    finally:
        parts.stop()
        keys.use_cluster_layout(False)


@pytest.fixture
def shared(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment emptied (then holding the registry marker); the key layout its own."""
    deployment.flush()
    with deployment.client() as client:
        client.set(keys.REGISTRY, "0 tests/distributed")
    yield deployment
    keys.use_cluster_layout(False)


StartRelay = Callable[..., Daemon]


@pytest.fixture
def start_relay(shared: Deployment, dns_server: DnsServer, tmp_path: Path) -> Iterator[StartRelay]:
    """A milter daemon on the shared deployment: ``start_relay(policy={...})``."""
    started: list[Daemon] = []
    dirs: list[Path] = []

    def start(**overrides: dict[str, object]) -> Daemon:
        workdir = tmp_path / f"relay{len(started) + 1}"
        workdir.mkdir()
        socket_dir = short_tempdir()
        dirs.append(socket_dir)
        listen = f"unix:{socket_dir / 'milter.sock'}"
        settings = daemon_settings(listen, "", dns_server.address, **overrides)
        settings["redis"] = dict(shared.redis_section) | dict(overrides.get("redis", {}))
        daemon = Daemon(workdir, settings, listen)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
    for folder in dirs:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def relays(start_relay: StartRelay) -> tuple[Daemon, Daemon]:
    """Two relays sharing the deployment."""
    return start_relay(), start_relay()
