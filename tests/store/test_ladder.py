"""The ladder against a real Redis: the near-cap counter, the MAIL FROM read, offences, lifts.

The near-cap counter rides in the end-of-message script (still one EVALSHA);
the MAIL FROM script reads the suspensions and the offence count (still one
EVALSHA); an offence is one pipelined round trip of its own.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.policy.ladder import Evidence, LadderPlan, Offence, Rung, offence_for
from aupmilter.policy.limits import Limits
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store import keys
from aupmilter.store.client import Charged, SenderState, Store
from aupmilter.store.ladder import LadderStore, Subject
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands

T0 = float(int(time.time()))
"""Now: the audit stream trims what is older than its retention by the clock it is given."""
FINGERPRINT = "0123456789abcdef0123456789abcdef"
PLAN = LadderPlan()
COUNTER = keys.near_cap_counter("acme", FINGERPRINT, "bob@acme.example", PLAN.window * 1000)


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis) -> Store:
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


@pytest.fixture
def ladder(redis_client: redis.Redis) -> LadderStore:
    return LadderStore(redis_client)


def test_keys_share_the_tenant_tag() -> None:
    assert f"aup:{{acme}}:nearcap:86400000:{FINGERPRINT}:s:bob@acme.example" == COUNTER
    assert keys.offences("acme") == "aup:{acme}:offences"
    assert keys.suspended_subjects("acme") == "aup:{acme}:suspended"
    assert keys.suspended_sender("bob@acme.example") == "sender:bob@acme.example"
    assert keys.suspended_domain("acme.example") == "domain:acme.example"


def charge(store: Store, now: float = T0) -> Charged:
    result = store.charge(
        "acme",
        Limits(100).windows,
        "bob@acme.example",
        [f"r{i}@d.example" for i in range(95)],
        int(now * 1000),
        counters=[(COUNTER, PLAN.counter())],
    )
    assert isinstance(result, Charged)
    return result


def test_the_counter_counts_transactions_in_the_charge_call(
    store: Store, redis_server: RedisServer
) -> None:
    fills = [charge(store, T0 + i).fills[-1] for i in range(3)]
    assert fills == [1, 2, 3], "messages, not recipients: one per transaction"
    commands = client_commands(redis_server, lambda: charge(store, T0 + 4))
    assert [c.split()[0].strip('"').upper() for c in commands] == ["EVALSHA"]


def test_the_counter_slides_out_of_its_window(store: Store) -> None:
    charge(store, T0)
    assert charge(store, T0 + PLAN.window + 2 * PLAN.window / 60).fills[-1] == 1


def state(store: Store, sender: str = "bob@acme.example", login: str | None = None) -> SenderState:
    found = store.sender_state(
        tenant_lookup(login, sender),
        sender_id=login or sender,
        auth_login=login,
        sender=sender,
        now_ms=int(T0 * 1000),
    )
    assert found is not None
    return found


def test_the_mail_from_read_finds_suspensions_and_offences(
    store: Store, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    assert (state(store).suspended_sender, state(store).suspended_domain) == (None, None)
    assert state(store).offences == 0
    redis_client.hset(keys.suspended_subjects("acme"), "sender:bob@acme.example", "1 why")
    redis_client.hset(keys.offences("acme"), "bob@acme.example", 2)
    found = state(store)
    assert (found.suspended_sender, found.suspended_domain, found.offences) == ("1 why", None, 2)
    assert state(store, "alice@acme.example").suspended_sender is None
    assert state(store, "alice@acme.example").offences == 0
    redis_client.hset(keys.suspended_subjects("acme"), "domain:acme.example", "2 dom")
    alice = state(store, "alice@ACME.example")
    assert (alice.suspended_sender, alice.suspended_domain) == (None, "2 dom")
    by_login = state(store, "carol@acme.example", login="acme")
    assert by_login.suspended_domain == "2 dom" and by_login.suspended_sender is None
    redis_client.hset(keys.suspended_subjects("acme"), "sender:acme", "3 login")
    assert state(store, "carol@acme.example", login="acme").suspended_sender == "3 login"
    commands = client_commands(redis_server, lambda: state(store))
    assert [c.split()[0].strip('"').upper() for c in commands] == ["EVALSHA"]


def test_the_null_sender_has_no_domain_entry(store: Store, redis_client: redis.Redis) -> None:
    redis_client.hset(keys.suspended_subjects("acme"), "sender:<>", "1 null")
    found = store.sender_state(
        tenant_lookup("acme", ""), sender_id="<>", auth_login="acme", sender="", now_ms=0
    )
    assert found is not None
    assert (found.suspended_sender, found.suspended_domain) == ("1 null", None)


def offence(previous: int, shadow: bool = False, domain: str | None = "acme.example") -> Offence:
    return offence_for(
        tenant="acme",
        sender="bob@acme.example",
        domain=domain,
        envelope_sender="bob@acme.example",
        previous=previous,
        evidence=Evidence(FINGERPRINT, 4, 95, 100, PLAN),
        shadow=shadow,
        queue_id="Q1",
        conn="c1",
        now=T0,
    )


def events(client: redis.Redis) -> list[dict[str, Any]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.AUDIT_STREAM))
    return [dict(fields) for _id, fields in entries]


@pytest.mark.parametrize(
    ("previous", "rung", "field"),
    [
        (0, Rung.SENDER, "sender:bob@acme.example"),
        (1, Rung.DOMAIN, "domain:acme.example"),
    ],
)
def test_an_offence_suspends_resets_counts_and_audits_in_one_round_trip(
    store: Store,
    ladder: LadderStore,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    previous: int,
    rung: Rung,
    field: str,
) -> None:
    charge(store)
    if previous:
        redis_client.hset(keys.offences("acme"), "bob@acme.example", previous)
    made = offence(previous)
    assert made.rung is rung
    counts: list[int | None] = []
    commands = client_commands(redis_server, lambda: counts.append(ladder.record(made, COUNTER)))
    assert counts == [previous + 1]
    names = [c.split()[0].strip('"').upper() for c in commands]
    assert names == ["HSET", "DEL", "HSET", "XADD", "HINCRBY"], "one pipeline, no MULTI"
    assert redis_client.hget(keys.SHARED_COUNTS, f"action:{rung.event}") == "1", "for metrics"
    assert not redis_client.exists(COUNTER), "the evidence is spent"
    value = cast(str | None, redis_client.hget(keys.suspended_subjects("acme"), field))
    assert value is not None and value.startswith(f"{int(T0)} ") and FINGERPRINT[:12] in value
    assert redis_client.hget(keys.offences("acme"), "bob@acme.example") == str(previous + 1)
    assert redis_client.ttl(keys.offences("acme")) == -1, "the tenant's history does not expire"
    assert redis_client.hget("aup:tenant:acme", "status") == "active"
    (event,) = events(redis_client)
    assert event["event"] == rung.event and event["verdict"] == "suspend"
    assert event["offence"] == str(previous + 1) and event["rule"] == "near-cap-repeat"
    assert json.loads(event["evidence"])["repeats"] == 4


def test_the_third_offence_terminates_the_tenant(
    store: Store, ladder: LadderStore, redis_client: redis.Redis
) -> None:
    made = offence(2)
    assert ladder.record(made, COUNTER) == 3
    tenant = redis_client.hgetall("aup:tenant:acme")
    assert tenant["status"] == "terminated"
    assert tenant["auto_terminated_at"] == str(int(T0)) == tenant["updated_at"]
    assert "near-cap-repeat offence 3" in tenant["reason"] and FINGERPRINT[:12] in tenant["reason"]
    assert redis_client.hlen(keys.suspended_subjects("acme")) == 0
    (event,) = events(redis_client)
    assert (event["event"], event["subject"], event["verdict"]) == (
        "tenant-terminated",
        "acme",
        "terminate",
    )
    assert state(store).record.status == "terminated"


def test_shadow_mode_changes_nothing_but_the_counter(
    store: Store, ladder: LadderStore, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    charge(store)
    commands = client_commands(
        redis_server, lambda: ladder.record(offence(0, shadow=True), COUNTER)
    )
    assert [c.split()[0].strip('"').upper() for c in commands] == ["DEL", "XADD", "HINCRBY"]
    assert not redis_client.exists(COUNTER)
    assert not redis_client.exists(keys.suspended_subjects("acme"), keys.offences("acme"))
    assert redis_client.hgetall(keys.SHARED_COUNTS) == {"action:would-sender-suspended": "1"}
    ladder.record(offence(2, shadow=True), COUNTER)
    assert redis_client.hget("aup:tenant:acme", "status") == "active"
    first, second = events(redis_client)
    assert (first["event"], first["verdict"]) == ("sender-suspended", "would-suspend")
    assert (second["event"], second["verdict"]) == ("tenant-terminated", "would-terminate")


def test_lift_deletes_one_field_and_audits_it(
    store: Store, ladder: LadderStore, redis_client: redis.Redis
) -> None:
    ladder.record(offence(0), COUNTER)
    ladder.record(offence(1), COUNTER)
    assert [(s.kind, s.subject) for s in ladder.suspensions("acme")] == [
        (Subject.DOMAIN, "acme.example"),
        (Subject.SENDER, "bob@acme.example"),
    ]
    lifted = ladder.lift("acme", Subject.SENDER, "bob@ACME.example", T0 + 60)
    assert lifted is not None and lifted.subject == "bob@acme.example"
    assert lifted.since == int(T0) and "offence 1" in lifted.reason
    assert ladder.lift("acme", Subject.SENDER, "bob@acme.example", T0 + 61) is None
    assert state(store).suspended_sender is None
    assert state(store).suspended_domain is not None
    assert ladder.lift("acme", Subject.DOMAIN, "ACME.example.", T0 + 62) is not None
    assert state(store).suspended_domain is None
    assert ladder.offences("acme") == {"bob@acme.example": 2}, "the history stays"
    lifts = [e for e in events(redis_client) if e["event"] == "lifted"]
    assert [(e["subject"], e["by"], e["ts"]) for e in lifts] == [
        ("bob@acme.example", "cli", str(int(T0 + 60))),
        ("acme.example", "cli", str(int(T0 + 62))),
    ]
    assert all(e["tenant"] == "acme" and e["detail"] for e in lifts)


def test_one_redis_cli_command_lifts_a_suspension(
    store: Store, ladder: LadderStore, redis_client: redis.Redis
) -> None:
    ladder.record(offence(0), COUNTER)
    assert state(store).suspended_sender is not None
    # redis-cli HDEL 'aup:{acme}:suspended' sender:bob@acme.example
    deleted = redis_client.execute_command(  # type: ignore[no-untyped-call]
        "HDEL", "aup:{acme}:suspended", "sender:bob@acme.example"
    )
    assert deleted == 1
    assert state(store).suspended_sender is None
