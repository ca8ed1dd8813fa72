"""sender_state.lua against a real Redis: the one read at MAIL FROM."""

from __future__ import annotations

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.policy.footer import TenantIdentity
from aupmilter.policy.limits import LimitOverrides
from aupmilter.policy.tenancy import Lookup, LookupKind, TenantRecord, tenant_lookup
from aupmilter.store.client import Store, StoreUnavailable
from aupmilter.store.tenants import TenantAdmin, validate_identity
from tests.support import RedisServer, client_commands, free_port, record_of


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis) -> Store:
    admin = TenantAdmin(redis_client, clock=lambda: 1_700_000_000)
    admin.add("acme", "standard", ["acme", "ops@acme"], ["acme.example"])
    admin.add("sub", "business", [], ["eu.acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


def test_login_lookup_returns_the_tenant_hash(store: Store) -> None:
    record = record_of(store, tenant_lookup("acme", "x@elsewhere.example"))
    assert record is not None
    assert record.tenant_id == "acme"
    assert record == TenantRecord(
        "acme",
        exists=True,
        status="active",
        plan="standard",
        reason="",
        domains=frozenset({"acme.example"}),
    )


def test_the_read_parses_every_field_the_policy_uses(
    store: Store, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        "aup:tenant:acme",
        mapping={
            "status": "suspended",
            "reason": "spam reports",
            "allowed_domains": "CRM.example, help.example.",
            "max_recipients_per_message": "5",
            "window.sender-rcpt-hour": "50",
        },
    )
    record = record_of(store, tenant_lookup("acme", ""))
    assert record is not None
    assert (record.status, record.plan, record.reason) == ("suspended", "standard", "spam reports")
    assert record.allowed_domains == {"crm.example", "help.example"}
    assert record.overrides == LimitOverrides(5, {"sender-rcpt-hour": 50})


def test_realm_form_login_is_its_own_mapping(store: Store) -> None:
    record = record_of(store, tenant_lookup("ops@acme", ""))
    assert record is not None and record.tenant_id == "acme"
    assert record_of(store, tenant_lookup("ops", "")) is None


def test_most_specific_domain_wins(store: Store) -> None:
    for sender, tenant in [
        ("a@acme.example", "acme"),
        ("a@mail.acme.example", "acme"),
        ("a@eu.acme.example", "sub"),
        ("a@x.eu.acme.example", "sub"),
    ]:
        record = record_of(store, tenant_lookup(None, sender))
        assert record is not None and record.tenant_id == tenant, sender


def test_unmapped_names_give_none(store: Store) -> None:
    assert record_of(store, tenant_lookup("stranger", "a@acme.example")) is None
    assert record_of(store, tenant_lookup(None, "a@other.example")) is None
    assert record_of(store, Lookup(None, ())) is None


def test_mapping_to_missing_hash_gives_empty_record(
    store: Store, redis_client: redis.Redis
) -> None:
    redis_client.set("aup:login:ghost", "nobody")
    record = record_of(store, Lookup(LookupKind.LOGIN, ("ghost",)))
    assert record is not None and record.tenant_id == "nobody" and not record.exists


def test_one_round_trip_per_lookup(store: Store, redis_server: RedisServer) -> None:
    record_of(store, tenant_lookup(None, "a@deep.mail.acme.example"))  # script loaded
    sent = client_commands(
        redis_server, lambda: record_of(store, tenant_lookup(None, "a@deep.mail.acme.example"))
    )
    assert len(sent) == 1 and sent[0].startswith("EVALSHA"), sent


def test_script_is_reloaded_after_script_flush(store: Store, redis_client: redis.Redis) -> None:
    assert record_of(store, tenant_lookup("acme", "")) is not None
    redis_client.script_flush()
    record = record_of(store, tenant_lookup("acme", ""))
    assert record is not None and record.tenant_id == "acme"


def test_unreachable_redis_raises_store_unavailable_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(RedisSettings(f"redis://127.0.0.1:{free_port()}/0", 0.2, 0.2))
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            record_of(store, tenant_lookup("acme", ""))
    errors = [r for r in caplog.records if r.name == "aupmilter.store"]
    assert len(errors) == 1 and "redis unavailable" in errors[0].getMessage()
    assert store.outage.down


def test_the_identity_rides_in_the_same_read(store: Store, redis_client: redis.Redis) -> None:
    """The footer's identity fields (tenant set-identity) come with the tenant: no extra call."""
    TenantAdmin(redis_client).set_identity(
        "acme", validate_identity("Acme Ltd", ["1 Main St\nSpringfield"], "ops@acme.example")
    )
    record = record_of(store, tenant_lookup("acme", ""))
    assert record is not None
    address = ("1 Main St", "Springfield")
    assert record.identity == TenantIdentity("Acme Ltd", address, "ops@acme.example")
    redis_client.hdel("aup:tenant:acme", "identity_contact")
    partial = record_of(store, tenant_lookup("acme", ""))
    assert partial is not None and partial.identity is not None
    assert partial.identity.missing == ("contact",)
