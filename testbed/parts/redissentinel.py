"""A real Sentinel deployment on loopback: one master, one replica, three sentinels.

The data nodes are `RedisServer`s (Debian's redis-server, no persistence),
the replica with `--replicaof`; the sentinels run Debian's `redis-sentinel`
(package redis-sentinel) on a config file each, which they rewrite as they
learn the deployment. Quorum 2, a master silent for `DOWN_AFTER_MS` is
failed over: `kill_master` and `wait_failover` are the fault test's steps.
`password` is the data nodes' default user's (requirepass, masterauth, the
sentinels' auth-pass), `acl_users` more users of theirs (`ACL SETUSER`
rules); `sentinel_password` the sentinels' own (requirepass).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from testbed.parts.redisserver import RedisServer
from testbed.parts.service import HOST, Service, require_free_port
from testbed.proc import TestbedError, free_port, wait_until

REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
SERVICE_NAME = "aup"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class SentinelProcess(Service):
    """One redis-sentinel on `port`, monitoring the master at `master_port`."""

    def __init__(
        self,
        run_dir: Path,
        port: int,
        master_port: int,
        *,
        password: str | None,
        sentinel_password: str | None,
        timeout: float,
    ) -> None:
        super().__init__(
            run_dir,
            stem="sentinel",
            marker="redis-sentinel",
            what="redis-sentinel",
            timeout=timeout,
        )
        self.port = port
        self.master_port = master_port
        self.password = password
        self.sentinel_password = sentinel_password

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=self.port, password=self.sentinel_password,
            decode_responses=True, socket_timeout=2,
        )  # fmt: skip

    def start(self) -> None:
        if self.running:
            return
        require_free_port(HOST, self.port, self.what, self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "sentinel.conf"
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            "daemonize no",
            "protected-mode no",
            f"dir {self.run_dir}",
            f"pidfile {self.pidfile}",
            'logfile ""',
            f"sentinel monitor {SERVICE_NAME} {HOST} {self.master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE_NAME} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {SERVICE_NAME} {self.password}")
        if self.sentinel_password is not None:
            lines.append(f"requirepass {self.sentinel_password}")
        conf.write_text("\n".join(lines) + "\n")
        try:
            self.launch([REDIS_SENTINEL, str(conf)])
        except FileNotFoundError:
            raise TestbedError(
                f"{REDIS_SENTINEL} is not installed (Debian package redis-sentinel;"
                " run scripts/bootstrap.sh)"
            ) from None
        self.wait_ready(self.ping)

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


class SentinelDeployment:
    """Master + replica + three sentinels, all on free loopback ports."""

    def __init__(
        self,
        run_dir: Path,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        acl_users: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.password = password
        self.sentinel_password = sentinel_password
        self.timeout = timeout
        extra = ["--masterauth", password] if password is not None else []
        self.master = RedisServer(
            self.run_dir / "master", password=password, acl_users=acl_users,
            extra_args=extra, timeout=timeout,
        )  # fmt: skip
        self.replica = RedisServer(
            self.run_dir / "replica", password=password, acl_users=acl_users,
            extra_args=[*extra, "--replicaof", HOST, str(self.master.port)], timeout=timeout,
        )  # fmt: skip
        self.sentinels = [
            SentinelProcess(
                self.run_dir / f"sentinel-{i}",
                free_port(),
                self.master.port,
                password=password,
                sentinel_password=sentinel_password,
                timeout=timeout,
            )
            for i in range(3)
        ]

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{s.port}" for s in self.sentinels]

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        wait_until(self._replica_synced, timeout=self.timeout, what="the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_agree, timeout=self.timeout, what="the sentinels to agree")

    def stop(self) -> None:
        for part in [*self.sentinels, self.replica, self.master]:
            part.stop()

    def sentinel(self) -> Sentinel:
        return Sentinel(  # type: ignore[no-untyped-call]
            [(HOST, s.port) for s in self.sentinels],
            sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": 2},
            password=self.password, decode_responses=True, socket_timeout=5,
        )  # fmt: skip

    def master_client(self) -> redis.Redis:
        client: redis.Redis = self.sentinel().master_for(SERVICE_NAME)  # type: ignore[no-untyped-call]
        return client

    def current_master(self) -> RedisServer:
        host, port = self.sentinel().discover_master(SERVICE_NAME)  # type: ignore[no-untyped-call]
        for node in (self.master, self.replica):
            if node.port == int(port):
                return node
        raise TestbedError(f"the sentinels name {host}:{port}, which is not of this deployment")

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; the sentinels fail over to the other node."""
        victim = self.current_master()
        victim.kill()
        return victim

    def wait_failover(self, victim: RedisServer) -> RedisServer:
        """Wait until the sentinels name the other node and it accepts writes; return it."""

        def promoted() -> RedisServer | None:
            try:
                node = self.current_master()
            except (redis.RedisError, TestbedError):
                return None
            if node is victim:
                return None
            try:
                with node.client() as client:
                    role = client.info("replication").get("role")
            except redis.RedisError:
                return None
            return node if role == "master" else None

        found = wait_until(promoted, timeout=self.timeout, what="the sentinels to fail over")
        assert found is not None
        return found

    def _replica_synced(self) -> bool:
        try:
            with self.replica.client() as client:
                return bool(client.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def _sentinels_agree(self) -> bool:
        try:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    fields = client.sentinel_master(SERVICE_NAME)
                    if int(fields.get("num-other-sentinels", 0)) < 2:
                        return False
                    if int(fields.get("num-slaves", 0)) < 1:
                        return False
        except redis.RedisError:
            return False
        return True
