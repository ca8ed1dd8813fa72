"""The complaint and bounce rate counters against a real Redis.

The delivered recipients are charged by the end-of-message script (its
counter rides in the same call: still one EVALSHA); complaints and bounces
are counted by the report intake into counters bucketed the same way.
"""

from __future__ import annotations

import time
from typing import cast

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.policy.limits import Limits
from aupmilter.policy.reputation import Measure, ReputationPlan, decide
from aupmilter.store import keys
from aupmilter.store.client import Charged, Store
from aupmilter.store.reputation import ReputationCounters
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands

PLAN = ReputationPlan()
WEEK_MS = PLAN.period * 1000
T0 = 1_800_000_000.0
DELIVERED = keys.rate_counter("acme", keys.RATE_DELIVERED, WEEK_MS)
COMPLAINTS = keys.rate_counter("acme", "complaints", WEEK_MS)
BOUNCES = keys.rate_counter("acme", "bounces", WEEK_MS)


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis) -> Store:
    TenantAdmin(redis_client).add("acme", "gold", ["alice"], ["acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


def charge(store: Store, recipients: list[str], now: float = T0) -> Charged:
    counter = PLAN.counter(keys.RATE_DELIVERED)
    result = store.charge(
        "acme", Limits(100).windows, "alice", recipients, int(now * 1000), [(DELIVERED, counter)]
    )
    assert isinstance(result, Charged)
    return result


def test_keys_share_the_tenant_tag() -> None:
    assert DELIVERED == "aup:{acme}:rate:delivered:604800000"
    assert COMPLAINTS == "aup:{acme}:rate:complaints:604800000"


def test_delivered_counts_only_unsuppressed_recipients_in_one_script_call(
    store: Store, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.hset(keys.suppressed("acme"), "gone@example.com", "complaint 1")
    charge(store, ["a@example.com"])  # loads the script
    seen = client_commands(
        redis_server, lambda: charge(store, ["b@example.com", "gone@example.com", "c@x.example"])
    )
    assert [c for c in seen if c.startswith("EVALSHA")] == seen[:1] and len(seen) == 1, seen
    counts = ReputationCounters(redis_client).count("acme", Measure.COMPLAINTS, 0, PLAN, T0)
    assert (counts.events, counts.delivered) == (0, 3)
    assert 0 < redis_client.pttl(DELIVERED) <= WEEK_MS + 3 * PLAN.counter("x").bucket_ms


def test_events_and_delivered_roll_out_after_the_period(
    store: Store, redis_client: redis.Redis
) -> None:
    counters = ReputationCounters(redis_client)
    charge(store, [f"r{i}@example.com" for i in range(10)], T0)
    assert counters.count("acme", Measure.BOUNCES, 2, PLAN, T0).events == 2
    later = T0 + 3 * 86_400
    charge(store, ["x@example.com"], later)
    counts = counters.count("acme", Measure.BOUNCES, 1, PLAN, later)
    assert (counts.events, counts.delivered) == (3, 11)
    # Past the period (plus one bucket) the first day's counts no longer count,
    # and their stale buckets are dropped at the next count.
    gone = T0 + PLAN.period + 2 * PLAN.counter("x").bucket_ms / 1000
    counts = counters.count("acme", Measure.BOUNCES, 1, PLAN, gone)
    assert (counts.events, counts.delivered) == (2, 1)
    assert len(redis_client.hkeys(BOUNCES)) == 2


def test_suspension_records_the_figures_and_resets_the_evidence(
    store: Store, redis_client: redis.Redis
) -> None:
    counters = ReputationCounters(redis_client)
    charge(store, [f"r{i}@example.com" for i in range(1000)])
    counts = counters.count("acme", Measure.COMPLAINTS, 3, PLAN, T0)
    counters.count("acme", Measure.BOUNCES, 1, PLAN, T0)
    decision = decide(Measure.COMPLAINTS, counts.events, counts.delivered, PLAN, "active")
    assert counters.suspend("acme", decision, PLAN, T0 + 1)
    fields = cast(dict[str, str], redis_client.hgetall(keys.tenant("acme")))
    assert fields[keys.FIELD_STATUS] == "suspended"
    assert fields[keys.FIELD_REASON].startswith("automatic suspension: complaint rate 0.30 %")
    assert fields[keys.FIELD_UPDATED_AT] == fields[keys.FIELD_AUTO_SUSPENDED_AT] == str(int(T0 + 1))
    assert redis_client.exists(COMPLAINTS, BOUNCES) == 0
    assert redis_client.exists(DELIVERED) == 1, "the volume stays: only the evidence is spent"
    # Already suspended: nothing changes.
    assert not counters.suspend("acme", decision, PLAN, T0 + 2)
    assert redis_client.hget(keys.tenant("acme"), keys.FIELD_UPDATED_AT) == str(int(T0 + 1))


@pytest.mark.parametrize("status", ["suspended", "terminated"])
def test_never_suspends_a_tenant_that_is_not_active(
    store: Store, redis_client: redis.Redis, status: str
) -> None:
    TenantAdmin(redis_client).set_status("acme", status, "ops")
    counters = ReputationCounters(redis_client)
    decision = decide(Measure.COMPLAINTS, 5, 1000, PLAN, "active")
    assert not counters.suspend("acme", decision, PLAN, T0)
    fields = cast(dict[str, str], redis_client.hgetall(keys.tenant("acme")))
    assert (fields["status"], fields["reason"]) == (status, "ops")
    assert keys.FIELD_AUTO_SUSPENDED_AT not in fields


def test_audit_event_carries_the_figures(store: Store, redis_client: redis.Redis) -> None:
    decision = decide(Measure.BOUNCES, 11, 200, PLAN, "active")
    # The stream trims by MINID from `now`: the event's own time must be real.
    ReputationCounters(redis_client).audit("acme", "auto-review", decision, time.time())
    [(_id, fields)] = cast(list[tuple[str, dict[str, str]]], redis_client.xrange(keys.AUDIT_STREAM))
    assert fields["event"] == "auto-review" and fields["measure"] == "bounces"
    assert (fields["events"], fields["delivered"]) == ("11", "200")
    assert fields["detail"].startswith("bounce rate 5.50 %")
