"""The audit trail's way into Redis: riding on script calls, the flusher, MINID retention."""

from __future__ import annotations

from typing import cast

import pytest
import redis

from aupmilter import audit
from aupmilter.config import RedisSettings
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store import keys
from aupmilter.store.client import Store, StoreUnavailable
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands, free_port, round_trips

DAY = 86_400.0
NOW = 1_796_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entries(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return cast(list[tuple[str, dict[str, str]]], client.xrange(keys.AUDIT_STREAM))


def event(n: int) -> dict[str, object]:
    return {"event": "verdict", "queue_id": f"Q{n}", "verdict": "accept", "recipients": n}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def trail(clock: Clock) -> audit.AuditTrail:
    return audit.AuditTrail(8 * DAY, clock=clock)


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis, trail: audit.AuditTrail) -> Store:
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5), trail)


def test_waiting_events_ride_on_the_next_script_call_in_one_round_trip(
    store: Store, trail: audit.AuditTrail, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store.sender_state(tenant_lookup("acme", "a@acme.example"))  # script loaded
    for n in range(3):
        trail.record(event(n))
    sent = client_commands(
        redis_server, lambda: store.sender_state(tenant_lookup("acme", "a@acme.example"))
    )
    assert round_trips(sent) == ["EVALSHA"]
    assert [c.split()[0] for c in sent] == ["XADD", "XADD", "XADD", "EVALSHA"]
    written = entries(redis_client)
    assert [fields["queue_id"] for _id, fields in written] == ["Q0", "Q1", "Q2"]
    assert written[0][1] == {
        "ts": f"{NOW:.3f}",
        "event": "verdict",
        "queue_id": "Q0",
        "verdict": "accept",
        "recipients": "0",
    }
    assert trail.pending == 0 and trail.written == 3


def test_a_script_redis_forgot_is_loaded_again_and_the_events_stay_written(
    store: Store, trail: audit.AuditTrail, redis_client: redis.Redis
) -> None:
    store.sender_state(tenant_lookup("acme", "a@acme.example"))
    redis_client.script_flush()
    trail.record(event(1))
    state = store.sender_state(tenant_lookup("acme", "a@acme.example"))
    assert state is not None and state.record.tenant_id == "acme"
    assert len(entries(redis_client)) == 1


def test_the_flusher_writes_only_what_waited_long_enough(
    store: Store, trail: audit.AuditTrail, clock: Clock, redis_client: redis.Redis
) -> None:
    trail.record(event(1))
    assert store.flush_audit(older_than=audit.FLUSH_AFTER) == 0, "too young to need a flush"
    clock.now += audit.FLUSH_AFTER
    assert store.flush_audit(older_than=audit.FLUSH_AFTER) == 1
    assert len(entries(redis_client)) == 1 and trail.pending == 0
    assert store.flush_audit() == 0, "nothing left"


def test_events_wait_while_redis_is_down_and_are_written_once_it_answers(
    store: Store, trail: audit.AuditTrail, redis_client: redis.Redis
) -> None:
    down = Store(RedisSettings(f"redis://127.0.0.1:{free_port()}/0", 0.2, 0.2), trail)
    trail.record(event(1))
    trail.record(event(2))
    with pytest.raises(StoreUnavailable):
        down.sender_state(tenant_lookup("acme", "a@acme.example"))
    assert down.flush_audit() == 0
    assert trail.pending == 2, "nothing is lost while Redis does not answer"
    store.sender_state(tenant_lookup("acme", "a@acme.example"))
    assert [f["queue_id"] for _id, f in entries(redis_client)] == ["Q1", "Q2"], "in order"


def test_retention_trims_by_minid_and_never_below_seven_days(
    store: Store, trail: audit.AuditTrail, clock: Clock, redis_client: redis.Redis
) -> None:
    """With a controlled clock: the stream keeps what is younger than the retention, exactly."""
    stamps = {"old": NOW - 9 * DAY, "edge": NOW - 8 * DAY + 60, "week": NOW - 7 * DAY}
    for name, when in stamps.items():
        redis_client.xadd(keys.AUDIT_STREAM, {"event": name}, id=f"{int(when * 1000)}-0")
    trail.record({"event": "now"})
    store.flush_audit()
    assert [f["event"] for _id, f in entries(redis_client)] == ["edge", "week", "now"]
    clock.now += DAY  # a day later, "edge" is past the 8 days
    trail.record({"event": "later"})
    store.flush_audit()
    assert [f["event"] for _id, f in entries(redis_client)] == ["week", "now", "later"]
    with pytest.raises(ValueError, match="at least 7 days"):
        audit.AuditTrail(6 * DAY)


def test_the_waiting_events_are_bounded(trail: audit.AuditTrail) -> None:
    for n in range(audit.MAX_PENDING + 5):
        trail.add({"event": "verdict", "n": str(n)}, NOW)
    assert trail.pending == audit.MAX_PENDING and trail.dropped == 5
    first = trail.take(1)
    assert first[0][1]["n"] == "5", "the oldest go first"
    assert len(trail.take()) == audit.MAX_PER_RIDE


def test_stream_fields_are_strings_with_lists_and_objects_as_json() -> None:
    fields = audit.stream_fields(
        {
            "event": "verdict",
            "recipients": 2,
            "rcpt": ["a@x", "b@y"],
            "evidence": {"used": 3, "limit": 5},
            "reply": None,
            "warnings": [],
            "flag": True,
        },
        NOW,
    )
    assert fields == {
        "ts": f"{NOW:.3f}",
        "event": "verdict",
        "recipients": "2",
        "rcpt": '["a@x", "b@y"]',
        "evidence": '{"limit": 5, "used": 3}',
        "flag": "1",
    }
