"""Fixtures shared by every test layer, and the layer markers.

Markers come from where a test lives, so a new test file gets its layer's
marker without anyone remembering it: ``pytest -m "not e2e"`` runs the fast
layers alone, ``-m milter`` only the milter-protocol tests, ``-m "not redis"``
what needs no redis-server. The markers are declared in pyproject.toml
(``--strict-markers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aupmilter.store import keys
from testbed.dnsserver import DnsServer
from tests.support import STARTUP_TIMEOUT, RedisServer

TESTS_DIR = Path(__file__).resolve().parent
# The first folder under tests/ -> the marker of its layer.
LAYER_MARKERS = {
    "distributed": "distributed",
    "e2e": "e2e",
    "faults": "faults",
    "milter": "milter",
    "store": "redis",
    "dns": "dns",
}
# Single files whose layer differs from their folder's.
FILE_MARKERS = {"packaging/test_deb.py": "deb"}
# Fixtures that start a redis-server: whatever uses them needs one.
REDIS_FIXTURES = frozenset({"redis_server", "redis_client"})


def layer_markers(item: pytest.Item) -> set[str]:
    """The markers ``item`` gets from its path and its fixtures."""
    try:
        relative = Path(item.path).resolve().relative_to(TESTS_DIR)
    except ValueError:
        return set()
    names = {LAYER_MARKERS[relative.parts[0]]} if relative.parts[0] in LAYER_MARKERS else set()
    if relative.as_posix() in FILE_MARKERS:
        names.add(FILE_MARKERS[relative.as_posix()])
    if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        names.add("redis")
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # First, so that the hooks that deselect by marker (tests/packaging) see these.
    for item in items:
        for name in sorted(layer_markers(item)):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


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
    """The session's Redis, emptied first (and started again if a test stopped it).

    Emptied, it still holds the tenant registry's marker, as a store does once
    `aup-milter tenant add` has run: without it an unknown sender tempfails
    (store.client.RegistryMissing), which the tests of a lost store prove.
    """
    redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.set(keys.REGISTRY, "0 tests/conftest.py")
    yield client
    client.close()
