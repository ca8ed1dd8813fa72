"""The window scripts against a plain-Python model of the documented semantics.

Random sequences of transactions (two senders, pairs of overlapping
transactions, aborts, time steps) run against the real Redis scripts with the
time passed in, and against ``Model``, which keeps every charge as a timestamped
event and counts, for a window of W ms split in buckets of b ms, the events of
the current bucket and the W/b buckets before it. Every RCPT reply and every
end-of-message outcome must agree, and no span of W ms may ever hold more than
the limit (the guarantee README states).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupmilter.config import RedisSettings
from aupmilter.policy.limits import (
    Limits,
    RecipientGate,
    Scope,
    Unit,
    Window,
    open_gate,
)
from aupmilter.policy.plans import Plan
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store.client import Charged, NoRoom, Store, WindowCatalog
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer

T0 = 1_800_000_000_000
WINDOWS = (
    Window("sender-rcpt-6s", Scope.SENDER, Unit.RECIPIENTS, 12, 6_000),
    Window("tenant-rcpt-60s", Scope.TENANT, Unit.RECIPIENTS, 30, 60_000),
    Window("tenant-msg-6s", Scope.TENANT, Unit.MESSAGES, 5, 6_000),
)
PLAN = Plan("model", "", Path(__file__), Limits(8, WINDOWS))
CATALOG = WindowCatalog({"model": PLAN})
SENDERS = ("s1", "s2")


@dataclass
class Model:
    events: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @staticmethod
    def subject(window: Window, sender: str) -> tuple[str, str]:
        return (window.name, sender if window.scope is Scope.SENDER else "*")

    def used(self, window: Window, sender: str, now: int) -> int:
        size = window.bucket_ms
        oldest = now // size - window.buckets
        return sum(a for t, a in self.events[self.subject(window, sender)] if t // size >= oldest)

    def rcpt_replies(self, sender: str, count: int, now: int) -> list[str]:
        used = [self.used(w, sender, now) for w in WINDOWS]
        replies = []
        taken = 0
        for _ in range(count):
            if taken >= PLAN.limits.max_recipients:
                replies.append("452")
                continue
            fits = all(
                u + (taken + 1 if w.unit is Unit.RECIPIENTS else 1) <= w.limit
                for w, u in zip(WINDOWS, used, strict=True)
            )
            if fits:
                taken += 1
                replies.append("ok")
            else:
                replies.append("450")
        return replies

    def charge(self, sender: str, recipients: int, now: int) -> int | None:
        """The index of the window without room, or None after charging all of them."""
        for index, window in enumerate(WINDOWS):
            amount = recipients if window.unit is Unit.RECIPIENTS else 1
            if self.used(window, sender, now) + amount > window.limit:
                return index
        for window in WINDOWS:
            amount = recipients if window.unit is Unit.RECIPIENTS else 1
            self.events[self.subject(window, sender)].append((now, amount))
        return None

    def assert_never_over_limit(self) -> None:
        for (name, _), events in self.events.items():
            window = next(w for w in WINDOWS if w.name == name)
            for start, _ in events:
                span = sum(a for t, a in events if start <= t < start + window.period_ms)
                assert span <= window.limit, (name, start, span)


def open_transaction(store: Store, sender: str, now: int) -> RecipientGate:
    state = store.sender_state(
        tenant_lookup(sender, ""), catalog=CATALOG, sender_id=sender, auth_login=sender, now_ms=now
    )
    assert state is not None
    gate = open_gate(
        PLAN.limits, state.record.overrides, state.fills, sender=sender, tenant="acme", now_ms=now
    )
    assert isinstance(gate, RecipientGate)
    return gate


transaction = st.tuples(
    st.sampled_from(SENDERS),
    st.integers(1, 10),  # recipients asked for
    st.booleans(),  # aborted after RCPT
)
step = st.tuples(
    st.integers(0, 2_500),  # ms since the previous step
    transaction,
    st.none() | transaction,  # a second transaction overlapping the first
)


@pytest.fixture
def store(redis_server: RedisServer) -> Store:
    return Store(RedisSettings(redis_server.url, 1.0, 1.0))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, min_size=1, max_size=40))
def test_scripts_agree_with_the_model(
    store: Store,
    redis_server: RedisServer,
    steps: list[tuple[int, tuple[str, int, bool], tuple[str, int, bool] | None]],
) -> None:
    client = redis_server.client()
    client.flushall()
    TenantAdmin(client).add("acme", "model", list(SENDERS), [])
    model = Model()
    now = T0
    for delay, first, second in steps:
        now += delay
        opened = [(txn, open_transaction(store, txn[0], now)) for txn in (first, second) if txn]
        for (sender, count, _aborted), gate in opened:
            expected = model.rcpt_replies(sender, count, now)
            got = [
                "ok" if (r := gate.decide(f"r{i}@x.example")) is None else r.code
                for i in range(count)
            ]
            assert got == expected, (sender, count, now)
        for (sender, _count, aborted), gate in opened:
            if aborted or not gate.accepted:
                continue
            result = store.charge("acme", PLAN.limits.windows, sender, list(gate.accepted), now)
            refused_by = model.charge(sender, len(gate.accepted), now)
            if refused_by is None:
                assert isinstance(result, Charged), (result, now)
            else:
                assert isinstance(result, NoRoom) and result.window_index == refused_by
    model.assert_never_over_limit()
    client.close()


def test_racing_transactions_never_overshoot(
    store: Store, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """16 threads, each with its own connection, race for a 40-recipient window."""
    window = Window("race", Scope.TENANT, Unit.RECIPIENTS, 40, 60_000)
    plan = Plan("race", "", Path(__file__), Limits(100, (window,)))
    catalog = WindowCatalog({"race": plan})
    TenantAdmin(redis_client).add("acme", "race", [f"t{i}" for i in range(16)], [])
    start = threading.Barrier(16)
    charged: list[int] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        own = Store(RedisSettings(redis_server.url, 2.0, 2.0))
        login = f"t{number}"
        start.wait()
        for round_ in range(5):
            now = T0 + round_
            state = own.sender_state(
                tenant_lookup(login, ""),
                catalog=catalog,
                sender_id=login,
                auth_login=login,
                now_ms=now,
            )
            assert state is not None
            gate = open_gate(
                plan.limits,
                state.record.overrides,
                state.fills,
                sender=login,
                tenant="acme",
                now_ms=now,
            )
            assert isinstance(gate, RecipientGate)
            for i in range(3):
                gate.decide(f"{login}-{round_}-{i}@x")
            if not gate.accepted:
                continue
            result = own.charge("acme", (window,), login, list(gate.accepted), now)
            if isinstance(result, Charged):
                with lock:
                    charged.append(len(gate.accepted))
        own.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sum(charged) <= 40
    # Everyone asked for far more than the window holds: it ends up (nearly) full.
    assert sum(charged) >= 38
    stored = redis_client.hgetall("aup:{acme}:w:r:60000")
    assert sum(map(int, stored.values())) == sum(charged)
