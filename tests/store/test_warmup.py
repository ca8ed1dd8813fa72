"""The warm-up ramp against a real Redis: the MAIL FROM read, changes recorded once, restart."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter import audit
from aupmilter.config import RedisSettings
from aupmilter.policy.limits import Limits, Scope, Unit, Window
from aupmilter.policy.plans import Plan
from aupmilter.policy.reputation import ReputationPlan
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.policy.warmup import WarmupPlan, WarmupState, at_mail_from
from aupmilter.store import keys
from aupmilter.store.client import SenderState, Store, WindowCatalog
from aupmilter.store.tenants import TenantAdmin, TenantError
from aupmilter.store.warmup import Mark
from tests.support import RedisServer

NOW = 1_796_000_000.0
DAY = 86_400
WINDOW = Window("tenant-recipients-hour", Scope.TENANT, Unit.RECIPIENTS, 100, 3_600_000)
RAMP = WarmupPlan(enabled=True, start_percent=10, factor=2.0, step=DAY)
PLANS = {
    "ramped": Plan("ramped", "", Path("x.toml"), Limits(100, (WINDOW,)), warmup=RAMP),
    "plain": Plan("plain", "", Path("x.toml"), Limits(100, (WINDOW,))),
}
CATALOG = WindowCatalog(PLANS)


def entries(client: redis.Redis) -> list[dict[str, str]]:
    found = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.AUDIT_STREAM))
    return [fields for _id, fields in found]


def warmup_events(client: redis.Redis) -> list[dict[str, str]]:
    return [e for e in entries(client) if e.get("event", "").startswith("warmup-")]


@pytest.fixture
def admin(redis_client: redis.Redis) -> TenantAdmin:
    admin = TenantAdmin(redis_client, clock=lambda: NOW)
    admin.add("new", "ramped", ["new"], ["new.example"], warmup=True)
    admin.add("old", "ramped", ["old"], ["old.example"])
    return admin


def make_store(server: RedisServer, now: float = NOW) -> Store:
    return Store(RedisSettings(server.url, 0.5, 0.5), audit.AuditTrail(8 * DAY, clock=lambda: now))


def read(store: Store, login: str, now: float = NOW) -> SenderState:
    state = store.sender_state(
        tenant_lookup(login, ""), catalog=CATALOG, sender_id=login, auth_login=login,
        now_ms=int(now * 1000),
    )  # fmt: skip
    assert state is not None
    return state


def count_rates(client: redis.Redis, tenant: str, complaints: int, delivered: int) -> None:
    counter = ReputationPlan().counter("x")
    bucket = str(int(NOW * 1000) // counter.bucket_ms)
    for measure, count in (("complaints", complaints), (keys.RATE_DELIVERED, delivered)):
        client.hincrby(keys.rate_counter(tenant, measure, counter.period_ms), bucket, count)


def test_tenant_add_on_a_ramp_plan_starts_the_ramp(admin: TenantAdmin) -> None:
    fields = admin.show("new").fields
    assert fields[keys.FIELD_WARMUP_STARTED_AT] == str(int(NOW))
    assert fields[keys.FIELD_WARMUP_REASON] == "tenant add"
    assert keys.FIELD_WARMUP_STARTED_AT not in admin.show("old").fields


def test_the_mail_from_read_brings_the_rates_only_for_a_tenant_in_warmup(
    admin: TenantAdmin, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    for tenant in ("new", "old"):
        count_rates(redis_client, tenant, complaints=3, delivered=1200)
    store = make_store(redis_server)
    state = read(store, "new")
    assert state.record.warmup == WarmupState(started_at=NOW, reason="tenant add")
    assert state.rates is not None
    assert (state.rates.complaints, state.rates.bounces, state.rates.delivered) == (3, 0, 1200)
    old = read(store, "old")
    assert old.record.warmup is None and old.rates is None
    admin.finish_warmup("new", "done by hand")
    assert read(store, "new").rates is None
    # A tenant whose plan has no ramp gets no rates either, whatever its fields.
    redis_client.hset(keys.tenant("new"), keys.FIELD_PLAN, "plain")
    redis_client.hdel(keys.tenant("new"), keys.FIELD_WARMUP_FINISHED_AT)
    assert read(store, "new").rates is None


def test_a_change_rides_the_next_call_and_is_recorded_and_audited_once(
    admin: TenantAdmin, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    workers = [make_store(redis_server), make_store(redis_server)]
    states = [read(worker, "new", NOW + 1.5 * DAY) for worker in workers]
    for worker, state in zip(workers, states, strict=True):
        ramp, transition = at_mail_from(RAMP, state.record.warmup, None, NOW + 1.5 * DAY)
        assert ramp.percent == 20 and transition is not None
        worker.queue_mark(Mark("new", transition, NOW + 1.5 * DAY))
    assert warmup_events(redis_client) == []
    for worker in workers:
        read(worker, "new", NOW + 1.5 * DAY)  # the ride
    events = warmup_events(redis_client)
    assert len(events) == 1, events
    assert events[0]["event"] == "warmup-step" and events[0]["percent"] == "20"
    assert events[0]["tenant"] == "new" and "windows at 20 %" in events[0]["detail"]
    stored = read(workers[0], "new", NOW + 1.5 * DAY).record.warmup
    assert stored is not None and stored.audited_percent == 20
    # Recorded: the next MAIL FROM sees no change.
    assert at_mail_from(RAMP, stored, None, NOW + 1.6 * DAY)[1] is None


def test_a_pause_and_a_resume_are_recorded_with_the_paused_time(
    admin: TenantAdmin, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = make_store(redis_server, now=NOW + 3.5 * DAY + audit.FLUSH_AFTER)
    count_rates(redis_client, "new", complaints=5, delivered=1000)
    state = read(store, "new", NOW + 0.5 * DAY)
    finding = "complaint rate 0.50 %"
    _, paused = at_mail_from(RAMP, state.record.warmup, finding, NOW + 0.5 * DAY)
    assert paused is not None and paused.change == "paused"
    store.queue_mark(Mark("new", paused, NOW + 0.5 * DAY))
    held = read(store, "new", NOW + 3 * DAY).record.warmup
    assert held is not None and held.paused_at == NOW + 0.5 * DAY
    assert held.pause_reason == finding
    ramp, resumed = at_mail_from(RAMP, held, None, NOW + 3.5 * DAY)
    assert ramp.percent == 10 and resumed is not None and resumed.change == "resumed"
    # No transaction comes: the daemon's flusher writes the mark once it waited FLUSH_AFTER.
    store.queue_mark(Mark("new", resumed, NOW + 3.5 * DAY + 0.5))
    store.flush_audit(audit.FLUSH_AFTER)
    waiting = admin.show("new").fields
    assert keys.FIELD_WARMUP_PAUSED_AT in waiting  # waited less than FLUSH_AFTER: not yet
    store.flush_audit(0.0)
    assert keys.FIELD_WARMUP_PAUSED_AT not in admin.show("new").fields
    after = read(store, "new", NOW + 3.5 * DAY).record.warmup
    assert after is not None and after.paused_at is None and after.paused_seconds == 3 * DAY
    assert [e["event"] for e in warmup_events(redis_client)] == ["warmup-paused", "warmup-resumed"]


def test_a_change_computed_before_a_restart_is_dropped(
    admin: TenantAdmin, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = make_store(redis_server)
    state = read(store, "new", NOW + 2 * DAY)
    _, transition = at_mail_from(RAMP, state.record.warmup, None, NOW + 2 * DAY)
    assert transition is not None and transition.percent == 40
    later = TenantAdmin(redis_client, clock=lambda: NOW + 2 * DAY)
    later.restart_warmup("new", "domain news.example verified")
    store.queue_mark(Mark("new", transition, NOW + 2 * DAY))
    read(store, "new", NOW + 2 * DAY)
    fields = later.show("new").fields
    assert keys.FIELD_WARMUP_SCALE not in fields
    assert fields[keys.FIELD_WARMUP_STARTED_AT] == str(int(NOW + 2 * DAY))
    assert [e["event"] for e in warmup_events(redis_client)] == ["warmup-restarted"]


def test_restart_and_finish_are_audited_and_reset_the_ramp(
    admin: TenantAdmin, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        keys.tenant("new"),
        mapping={
            keys.FIELD_WARMUP_PAUSED_AT: str(int(NOW)),
            keys.FIELD_WARMUP_PAUSE_REASON: "x",
            keys.FIELD_WARMUP_PAUSED_SECONDS: "50",
            keys.FIELD_WARMUP_SCALE: "40",
        },
    )
    fields = admin.restart_warmup("new", "domain b.example verified").fields
    assert fields[keys.FIELD_WARMUP_REASON] == "domain b.example verified"
    for gone in (
        keys.FIELD_WARMUP_PAUSED_AT,
        keys.FIELD_WARMUP_PAUSE_REASON,
        keys.FIELD_WARMUP_PAUSED_SECONDS,
        keys.FIELD_WARMUP_SCALE,
        keys.FIELD_WARMUP_FINISHED_AT,
    ):
        assert gone not in fields
    fields = admin.finish_warmup("new", "").fields
    assert fields[keys.FIELD_WARMUP_FINISHED_AT] == str(int(NOW))
    assert fields[keys.FIELD_WARMUP_SCALE] == "100"
    events = warmup_events(redis_client)
    assert [e["event"] for e in events] == ["warmup-restarted", "warmup-finished"]
    assert "domain b.example verified" in events[0]["detail"] and events[0]["by"] == "cli"
    with pytest.raises(TenantError):
        admin.restart_warmup("ghost", "")
