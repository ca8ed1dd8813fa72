"""The window scripts against a real Redis: what MAIL FROM reads, what end of message charges."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.policy.limits import (
    Limits,
    RecipientGate,
    Scope,
    Unit,
    Window,
    bucket_ms,
    open_gate,
)
from aupmilter.policy.plans import Plan
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.policy.tokens import Reference, TokenKind
from aupmilter.store import keys
from aupmilter.store.client import (
    AllSuppressed,
    Charged,
    ChargeResult,
    NoRoom,
    ReferenceWrite,
    SenderState,
    Store,
    WindowCatalog,
)
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands

MINUTE = 60_000
T0 = 1_800_000_000_000  # a multiple of every bucket length used here

RCPT_MIN = Window("sender-rcpt-minute", Scope.SENDER, Unit.RECIPIENTS, 10, MINUTE)
MSG_MIN = Window("tenant-msg-minute", Scope.TENANT, Unit.MESSAGES, 3, MINUTE)
GOLD = Plan("gold", "test plan", Path(__file__), Limits(5, (RCPT_MIN, MSG_MIN)))
OTHER = Plan(
    "other",
    "",
    GOLD.source,
    Limits(100, (Window("big", Scope.SENDER, Unit.RECIPIENTS, 1000, 3_600_000),)),
)


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis) -> Store:
    admin = TenantAdmin(redis_client)
    admin.add("acme", "gold", ["alice", "bob"], ["acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


CATALOG = WindowCatalog({"other": OTHER, "gold": GOLD})


def read(store: Store, login: str = "alice", now: int = T0, sender: str = "") -> SenderState:
    state = store.sender_state(
        tenant_lookup(login, sender),
        catalog=CATALOG,
        sender_id=login,
        auth_login=login,
        sender=sender,
        now_ms=now,
    )
    assert state is not None
    return state


def open_for(store: Store, login: str = "alice", now: int = T0) -> RecipientGate:
    state = read(store, login, now)
    gate = open_gate(
        GOLD.limits, state.record.overrides, state.fills, sender=login, tenant="acme", now_ms=now
    )
    assert isinstance(gate, RecipientGate)
    return gate


def send(store: Store, gate: RecipientGate, recipients: Sequence[str], now: int) -> ChargeResult:
    for address in recipients:
        gate.decide(address)
    return store.charge("acme", gate.limits.windows, gate.sender, list(gate.accepted), now)


def test_fresh_windows_read_empty_and_only_the_plans_windows(store: Store) -> None:
    state = read(store)
    assert [f.used for f in state.fills] == [0, 0]
    assert state.stream is None


def test_charge_counts_recipients_and_messages(store: Store) -> None:
    result = send(store, open_for(store), ["a@x", "b@x", "c@x"], T0)
    assert result == Charged(suppressed=(), fills=(3, 1))
    assert [f.used for f in read(store).fills] == [3, 1]
    # Another sender of the same tenant shares the tenant window only.
    assert [f.used for f in read(store, "bob").fills] == [0, 1]


def test_read_returns_the_buckets_behind_the_fill(store: Store) -> None:
    send(store, open_for(store), ["a@x"], T0)
    send(store, open_for(store, now=T0 + 2500), ["b@x", "c@x"], T0 + 2500)
    fill = read(store, now=T0 + 3000).fills[0]
    first = T0 // bucket_ms(MINUTE)
    assert fill.used == 3
    assert sorted(fill.buckets) == [(first, 1), (first + 2, 2)]


def test_window_slides(store: Store) -> None:
    bucket = bucket_ms(MINUTE)
    send(store, open_for(store), ["a@x", "b@x", "c@x", "d@x", "e@x"], T0)
    # Still counted one full period later (the bucket of T0 plus 60 before the current one)...
    assert read(store, now=T0 + MINUTE).fills[0].used == 5
    assert read(store, now=T0 + MINUTE + bucket - 1).fills[0].used == 5
    # ...and gone one bucket after that: the error bound, on the safe side.
    assert read(store, now=T0 + MINUTE + bucket).fills[0].used == 0


def test_no_room_charges_nothing(store: Store, redis_client: redis.Redis) -> None:
    gate_a = open_for(store)
    gate_b = open_for(store)
    assert send(store, gate_a, [f"a{i}@x" for i in range(5)], T0) == Charged((), (5, 1))
    for address in [f"b{i}@x" for i in range(6)]:
        gate_b.decide(address)
    # gate_b saw an empty window at MAIL FROM but accepted only 5 (the cap).
    assert len(gate_b.accepted) == 5
    assert send(store, gate_b, [], T0) == Charged((), (10, 2))
    gate_c = open_for(store)
    assert gate_c.room == 0
    before = {k: redis_client.hgetall(k) for k in redis_client.keys("aup:{acme}:w:*")}
    result = store.charge("acme", GOLD.limits.windows, "alice", ["late@x"], T0)
    assert isinstance(result, NoRoom) and result.window_index == 0
    assert result.fill.used == 10
    after = {k: redis_client.hgetall(k) for k in redis_client.keys("aup:{acme}:w:*")}
    assert before == after


def test_message_window_refuses_the_fourth_message(store: Store) -> None:
    for login in ("alice", "bob", "alice"):
        assert isinstance(send(store, open_for(store, login), ["x@y"], T0), Charged)
    result = store.charge("acme", GOLD.limits.windows, "bob", ["x@y"], T0)
    assert isinstance(result, NoRoom) and result.window_index == 1


def test_suppressed_recipients_are_dropped_and_not_charged(
    store: Store, redis_client: redis.Redis
) -> None:
    redis_client.hset(keys.suppressed("acme"), mapping={"b@x": "manual 1", "c@x": "one-click 2"})
    result = send(store, open_for(store), ["a@x", "b@x", "c@x"], T0)
    assert result == Charged(suppressed=("b@x", "c@x"), fills=(1, 1))
    all_gone = send(store, open_for(store), ["b@x"], T0)
    assert all_gone == AllSuppressed(("b@x",))
    assert [f.used for f in read(store).fills] == [1, 1]


def test_keys_share_the_tenant_hash_tag_expire_and_drop_stale_buckets(
    store: Store, redis_client: redis.Redis
) -> None:
    for step in range(70):
        now = T0 + step * bucket_ms(MINUTE)
        store.charge("acme", GOLD.limits.windows, "alice", ["a@x"], now)
    window_keys = redis_client.keys("aup:*:w:*")
    assert sorted(window_keys) == [
        "aup:{acme}:w:m:60000",
        "aup:{acme}:w:r:60000:s:alice",
    ]
    for key in window_keys:
        assert redis_client.hlen(key) <= RCPT_MIN.buckets + 1
        ttl = redis_client.pttl(key)
        assert 0 < ttl <= MINUTE + 2 * bucket_ms(MINUTE)


def test_memory_per_window_key_is_bounded(store: Store, redis_client: redis.Redis) -> None:
    """The figure stated in README: one full window hash stays under 1 KiB."""
    day = Window("day", Scope.SENDER, Unit.RECIPIENTS, 10**9, 86_400_000)
    for step in range(200):
        now = T0 + step * day.bucket_ms
        store.charge("acme", (day,), "someone.with.a.long.login@acme.example", ["a@x"] * 1, now)
    key = keys.window_key("acme", day, "someone.with.a.long.login@acme.example")
    assert redis_client.hlen(key) == day.buckets + 1
    usage = redis_client.memory_usage(key)
    assert usage is not None and usage < 1024, usage


def test_stream_is_the_logins_else_the_senders(store: Store, redis_client: redis.Redis) -> None:
    redis_client.hset(
        keys.tenant_streams("acme"), mapping={"alice": "bulk", "b@acme.example": "transactional"}
    )
    assert read(store, "alice").stream == "bulk"
    state = store.sender_state(
        tenant_lookup(None, "b@acme.example"),
        catalog=CATALOG,
        sender_id="b@acme.example",
        sender="b@acme.example",
        now_ms=T0,
    )
    assert state is not None and state.stream == "transactional"


def test_one_round_trip_each(store: Store, redis_server: RedisServer) -> None:
    gate = open_for(store)
    send(store, gate, ["a@x"], T0)  # both scripts loaded
    commands = client_commands(
        redis_server,
        lambda: send(store, open_for(store), [f"r{i}@x" for i in range(5)], T0),
    )
    assert [c.split()[0] for c in commands] == ["EVALSHA", "EVALSHA"], commands


def test_charge_script_is_reloaded_after_script_flush(
    store: Store, redis_client: redis.Redis
) -> None:
    send(store, open_for(store), ["a@x"], T0)
    redis_client.script_flush()
    assert isinstance(send(store, open_for(store), ["b@x"], T0), Charged)


def test_thousands_of_recipients_in_one_charge(store: Store, redis_client: redis.Redis) -> None:
    big = Window("big", Scope.TENANT, Unit.RECIPIENTS, 10**6, MINUTE)
    recipients = [f"r{i}@x" for i in range(5000)]
    redis_client.hset(keys.suppressed("acme"), "r4999@x", "manual 1")
    result = store.charge("acme", (big,), "alice", recipients, T0)
    assert result == Charged(suppressed=("r4999@x",), fills=(4999,))


def reference(address: str) -> Reference:
    return Reference(TokenKind.RECIPIENT, "acme", address)


@pytest.mark.parametrize(
    ("known_bulk", "bulk_from", "counter_fill", "written"),
    [
        (True, None, None, True),
        (False, None, None, False),
        (False, 3, 2, False),
        (False, 3, 3, True),
    ],
)
def test_references_are_written_in_the_charge_call_only_for_bulk(
    store: Store,
    redis_client: redis.Redis,
    known_bulk: bool,
    bulk_from: int | None,
    counter_fill: int | None,
    written: bool,
) -> None:
    counter = Window("fp", Scope.TENANT, Unit.RECIPIENTS, -1, MINUTE)
    counters = []
    if counter_fill is not None:
        key = "aup:{acme}:fp:test"
        counters.append((key, counter))
        if counter_fill > 1:
            store.charge("acme", (), "alice", ["old@x"] * (counter_fill - 1), T0, counters=counters)
    write = ReferenceWrite((reference("a@x"),), 600, known_bulk, bulk_from)
    result = store.charge("acme", (), "alice", ["a@x"], T0, counters=counters, references=write)
    assert isinstance(result, Charged)
    key = keys.unsubscribe_ref(reference("a@x").ref_text)
    assert (redis_client.get(key) == "acme\na@x") is written
    if written:
        assert 0 < redis_client.ttl(key) <= 600


def test_no_reference_without_a_charge(store: Store, redis_client: redis.Redis) -> None:
    full = Window("full", Scope.TENANT, Unit.MESSAGES, 0, MINUTE)
    write = ReferenceWrite((reference("a@x"),), 600, True)
    result = store.charge("acme", (full,), "alice", ["a@x"], T0, references=write)
    assert isinstance(result, NoRoom)
    assert not redis_client.keys("aup:unsubref:*")
