"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from testbed.dnsserver import DnsServer
from tests.support import STARTUP_TIMEOUT, RedisServer


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    """The test zones (testbed.zones) served over real DNS on a loopback port."""
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), timeout=STARTUP_TIMEOUT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's Redis, emptied first (and started again if a test stopped it)."""
    redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()
