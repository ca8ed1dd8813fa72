"""The tenant registry's marker: a store that lost its state is not a store of unknown senders."""

from __future__ import annotations

import logging

import pytest
import redis

from aupmilter.cli.status import CRITICAL, OK, check_redis
from aupmilter.config import RedisSettings
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store import keys
from aupmilter.store.client import RegistryMissing, Store
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, record_of


@pytest.fixture
def store(redis_server: RedisServer) -> Store:
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


def test_an_empty_store_has_no_registry_and_says_so(
    store: Store, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.flushall()  # what a restart without persistence leaves
    caplog.set_level(logging.WARNING, logger="aupmilter.store")
    for _ in range(3):
        with pytest.raises(RegistryMissing):
            record_of(store, tenant_lookup("acme", "a@acme.example"))
    missing = [r for r in caplog.records if "tenant registry missing" in r.getMessage()]
    assert len(missing) == 1, "logged once per outage, not once per message"

    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    assert redis_client.get(keys.REGISTRY), "tenant add writes the marker"
    record = record_of(store, tenant_lookup("acme", ""))
    assert record is not None and record.tenant_id == "acme"
    assert any("tenant registry back" in r.getMessage() for r in caplog.records)
    # A sender nobody registered is unknown again: refused, not tempfailed.
    assert record_of(store, tenant_lookup("stranger", "")) is None


def test_the_tenant_index_alone_counts_as_a_registry(
    store: Store, redis_client: redis.Redis
) -> None:
    """A store written before the marker existed: its tenants are in aup:tenants."""
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], [])
    redis_client.delete(keys.REGISTRY)
    assert record_of(store, tenant_lookup("stranger", "")) is None


def test_a_mapped_sender_passes_without_the_marker(store: Store, redis_client: redis.Redis) -> None:
    """Tenants made by hand: the mapping found is proof enough that the registry is there."""
    redis_client.flushall()
    redis_client.hset(keys.tenant("acme"), mapping={"status": "active", "plan": "standard"})
    redis_client.set(keys.login("acme"), "acme")
    record = record_of(store, tenant_lookup("acme", ""))
    assert record is not None and record.tenant_id == "acme"


def test_status_reports_a_missing_registry_critical(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.flushall()
    _redis, _scripts, registry = check_redis(redis_server.url, 2.0)
    assert registry.status == CRITICAL and "tenant registry missing" in registry.summary
    redis_client.set(keys.REGISTRY, "1 test")
    assert check_redis(redis_server.url, 2.0)[2].status == OK
