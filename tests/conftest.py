"""Fixtures shared by every test layer."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on loopback, without persistence."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


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
    with monitor_client.monitor() as monitor:
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
