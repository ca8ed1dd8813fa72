"""Fixtures for the milter-protocol tests: a private Redis and the real daemon.

The machinery lives in ``harness.py`` (processes, logs, tenants) and ``mta.py``
(the MTA side of the milter protocol); this file only wires it into pytest.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis

from testbed.dnsserver import DnsServer
from tests.milter.harness import (
    Daemon,
    StartDaemon,
    Tenants,
    daemon_settings,
    short_tempdir,
)
from tests.support import STARTUP_TIMEOUT, RedisServer


@pytest.fixture(scope="session")
def shared_redis(redis_server: RedisServer) -> RedisServer:
    """The session's Redis (tests/conftest.py), shared with the store tests."""
    return redis_server


@pytest.fixture(autouse=True)
def redis_db(redis_client: redis.Redis) -> redis.Redis:
    """The shared Redis, emptied before each test."""
    return redis_client


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, for tests that stop and restart it."""
    server = RedisServer(tmp_path / "private-redis", timeout=STARTUP_TIMEOUT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tenants(shared_redis: RedisServer) -> Tenants:
    return Tenants(shared_redis)


@pytest.fixture
def acme(tenants: Tenants) -> str:
    """An active tenant on the standard plan, with login 'acme' and domain acme.example."""
    tenants.add("acme", logins=["acme"], domains=["acme.example"])
    return "acme"


@pytest.fixture
def start_daemon(
    shared_redis: RedisServer, dns_server: DnsServer, tmp_path: Path
) -> Iterator[StartDaemon]:
    """Start a daemon: ``start_daemon(policy={...}, milter={...}, redis_url=..., listen=...)``.

    Config and log live in the test's tmp_path (kept by pytest for inspection);
    the unix socket lives in a short /tmp directory (sun_path is 108 bytes).
    """
    started: list[Daemon] = []
    dirs: list[Path] = []

    def start(
        *,
        listen: str | None = None,
        address: str | None = None,
        redis_url: str | None = None,
        wrapper: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        umask: int = -1,
        wait: bool = True,
        **overrides: Mapping[str, object],
    ) -> Daemon:
        workdir = tmp_path / f"daemon{len(started) + 1}"
        workdir.mkdir()
        socket_dir = short_tempdir()
        dirs.append(socket_dir)
        listen = listen or f"unix:{socket_dir / 'milter.sock'}"
        settings = daemon_settings(
            listen, redis_url or shared_redis.url, dns_server.address, **overrides
        )
        daemon = Daemon(workdir, settings, address or listen, wrapper, pass_fds, env, umask)
        started.append(daemon)
        if wait:
            daemon.start()
        else:
            daemon.spawn()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
    for workdir in dirs:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def daemon(start_daemon: StartDaemon) -> Daemon:
    """The daemon with the default test configuration, on the shared Redis."""
    return start_daemon()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets a test binds itself."""
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
