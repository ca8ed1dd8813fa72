"""Test support shared by every layer: bounded waits, log tails, a private redis-server.

Nothing is mocked: RedisServer runs the real redis-server on a free loopback
port, without persistence. Every wait is bounded; a timeout fails with the
tail of the relevant log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from aupmilter.policy.tenancy import Lookup, TenantRecord
from aupmilter.store.client import Store
from testbed.proc import tail, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
STARTUP_TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[1]


__all__ = [
    "HarnessError",
    "RedisServer",
    "client_commands",
    "free_port",
    "record_of",
    "tail",
    "wait_until",
]


class HarnessError(AssertionError):
    """A component did not come up or answer in time; the text carries its log tail."""

    __test__ = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server without persistence; stop() and start() keep the port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=0, decode_responses=True, socket_timeout=5
        )

    def start(self) -> None:
        assert self.proc is None, "redis-server already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                    "--protected-mode", "no",
                    "--daemonize", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )  # fmt: skip
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise HarnessError(
                    f"redis-server exited with {proc.returncode}{tail(self.log_path)}"
                )
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(ready, timeout=STARTUP_TIMEOUT, what=f"redis-server on port {self.port}",
                   on_timeout=lambda: tail(self.log_path))  # fmt: skip

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s) and wait for it: the port is free for start() again."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def client_commands(server: RedisServer, action: Callable[[], object]) -> list[str]:
    """Commands clients sent while `action` ran (not those run inside Lua scripts).

    MONITOR shows every command with its origin; a marker command from a
    separate connection says where the action ended.
    """
    marker = f"end-of-action-{time.monotonic_ns()}"
    seen: list[str] = []
    marker_client = redis.Redis(port=server.port, socket_timeout=5)
    marker_client.ping()  # its handshake happens before monitoring starts
    monitor_client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    with monitor_client.monitor() as monitor:  # type: ignore[no-untyped-call]
        action()
        marker_client.echo(marker)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            entry = monitor.next_command()
            if marker in entry["command"]:
                break
            if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
                continue
            seen.append(entry["command"])
    monitor_client.close()
    marker_client.close()
    return seen


def record_of(store: Store, lookup: Lookup) -> TenantRecord | None:
    """Just the tenant the MAIL FROM read finds (the tests of tenancy ignore windows)."""
    state = store.sender_state(lookup)
    return state.record if state else None
