"""The lean script calls (store.client.LeanCalls) against a real Redis: redis-py's replies.

The per-transaction script calls of one server or a Sentinel skip redis-py's
per-command machinery (issue 12); these tests hold them to what redis-py
gives: the same replies and error objects for the real scripts, the ride's
events written, NOSCRIPT recovered, a killed connection retried once, and a
connection still in step after an error reply in the middle of a ride.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

from aupmilter import audit
from aupmilter.config import RedisSettings
from aupmilter.policy.limits import Limits, Scope, Unit, Window
from aupmilter.policy.plans import Plan
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store import keys
from aupmilter.store.client import (
    Charged,
    LeanCalls,
    NoRoom,
    SenderState,
    Store,
    StoreUnavailable,
    WindowCatalog,
)
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands, round_trips

NOW = 1_796_000_000.0
NOW_MS = int(NOW * 1000)
DAY = 86_400.0
MINUTE = 60_000
RCPT_MIN = Window("sender-rcpt-minute", Scope.SENDER, Unit.RECIPIENTS, 4, MINUTE)
MSG_MIN = Window("tenant-msg-minute", Scope.TENANT, Unit.MESSAGES, 3, MINUTE)
GOLD = Plan("gold", "test plan", Path(__file__), Limits(5, (RCPT_MIN, MSG_MIN)))
CATALOG = WindowCatalog({"gold": GOLD})
ERROR_SCRIPT = "return redis.error_reply('BAD this script always fails')"


class Recording(Store):
    """A Store that keeps every script call it made and the reply it got."""

    def __init__(self, settings: RedisSettings, trail: audit.AuditTrail | None = None) -> None:
        super().__init__(settings, trail)
        self.calls: list[tuple[Script, list[str], list[str], Any]] = []

    def _call(self, call: str, script: Script, script_keys: list[str], args: list[str]) -> Any:
        reply = super()._call(call, script, script_keys, args)
        self.calls.append((script, list(script_keys), list(args), reply))
        return reply


def typed(value: Any) -> Any:
    """A reply with every value's type beside it: "1" and 1 must not compare equal."""
    if isinstance(value, list):
        return ["list", [typed(item) for item in value]]
    if isinstance(value, Exception):
        return [type(value).__name__, str(value)]
    return [type(value).__name__, value]


def seed(client: redis.Redis) -> None:
    client.set(keys.REGISTRY, "0 tests/store/test_lean_calls.py")
    TenantAdmin(client).add("acme", "gold", ["alice"], ["acme.example"])
    client.hset(keys.suppressed("acme"), "s@x", "manual 1")


def db_url(server: RedisServer, db: int) -> str:
    url = server.url
    assert url.endswith("/0"), url
    return f"{url[:-2]}/{db}"


def read(store: Store, login: str = "alice") -> SenderState | None:
    return store.sender_state(
        tenant_lookup(login, f"{login}@acme.example"),
        catalog=CATALOG,
        sender_id=login,
        auth_login=login,
        sender=f"{login}@acme.example",
        now_ms=NOW_MS,
    )


def charge(store: Store, recipients: Sequence[str]) -> Any:
    return store.charge("acme", GOLD.limits.windows, "alice", list(recipients), NOW_MS)


def entries(client: redis.Redis) -> list[dict[str, str]]:
    found = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.AUDIT_STREAM))
    return [fields for _id, fields in found]


def client_id(lean: LeanCalls) -> int:
    (reply,) = lean.round_trip([("CLIENT", "ID")])
    return int(reply)


@pytest.fixture
def trail() -> audit.AuditTrail:
    return audit.AuditTrail(8 * DAY, clock=lambda: NOW)


@pytest.fixture
def store(
    redis_server: RedisServer, redis_client: redis.Redis, trail: audit.AuditTrail
) -> Iterator[Recording]:
    seed(redis_client)
    store = Recording(RedisSettings(redis_server.url, 1.0, 1.0), trail)
    yield store
    store.close()


@pytest.fixture
def lean(store: Store) -> LeanCalls:
    assert store._lean is not None, "one server: the lean path"
    return store._lean


def test_the_real_scripts_reply_as_through_redis_py(
    store: Recording, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Every call replayed through redis-py's Script on a second database seeded alike."""
    assert read(store) is not None
    assert read(store, "nobody") is None, "unknown sender: the script's empty reply"
    assert charge(store, ["a@x", "s@x", "b@x"]) == Charged(suppressed=("s@x",), fills=(2, 1))
    assert isinstance(charge(store, ["c@x", "d@x", "e@x"]), NoRoom)
    state = read(store)
    assert state is not None and [fill.used for fill in state.fills] == [2, 1]
    assert len(store.calls) == 5

    other = redis.Redis.from_url(db_url(redis_server, 1), decode_responses=True)
    try:
        seed(other)
        for script, script_keys, args, reply in store.calls:
            through_redis_py = Script(other, script.script)(keys=script_keys, args=args)
            assert typed(reply) == typed(through_redis_py)
    finally:
        other.close()


def test_error_replies_are_redis_py_s_error_objects_in_their_place(
    lean: LeanCalls, redis_client: redis.Redis
) -> None:
    failing = redis_client.script_load(ERROR_SCRIPT)
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", "0" * 40, 0),
        ("EVALSHA", failing, 0),
        ("XADD", keys.AUDIT_STREAM, "MINID", 0, "*", "event", "x"),
        ("EVALSHA", redis_client.script_load("return {1, 'two', {3}}"), 0),
    ]
    replies = lean.round_trip(commands)
    pipe = redis_client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    expected = pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], NoScriptError)
    assert isinstance(replies[1], ResponseError) and "always fails" in str(replies[1])
    assert isinstance(replies[2], str)
    assert replies[3] == [1, "two", [3]]
    assert typed(replies[:2] + replies[3:]) == typed(expected[:2] + expected[3:])
    assert typed(replies[2])[0] == typed(expected[2])[0], "both stream ids"


def test_a_script_error_is_raised_as_redis_py_raises_it(
    lean: LeanCalls, redis_client: redis.Redis
) -> None:
    script = Script(redis_client, ERROR_SCRIPT.encode())
    with pytest.raises(ResponseError) as through_redis_py:
        script(keys=[], args=[])
    with pytest.raises(ResponseError) as lean_error:
        lean.script(script, [], [])
    assert type(lean_error.value) is type(through_redis_py.value)
    assert str(lean_error.value) == str(through_redis_py.value)


def test_the_ride_writes_the_events_and_gets_the_scripts_reply_in_one_write(
    store: Recording,
    trail: audit.AuditTrail,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    read(store)  # the script loaded
    for n in range(3):
        trail.record({"event": "verdict", "queue_id": f"Q{n}", "recipients": n})
    sent = client_commands(redis_server, lambda: read(store))
    assert [command.split()[0] for command in sent] == ["XADD", "XADD", "XADD", "EVALSHA"]
    assert round_trips(sent) == ["EVALSHA"]
    assert " MINID 1795308800000 * " in sent[0], "exact trimming at 8 days"
    assert [e["queue_id"] for e in entries(redis_client)] == ["Q0", "Q1", "Q2"]
    assert entries(redis_client)[2] == {
        "ts": f"{NOW:.3f}",
        "event": "verdict",
        "queue_id": "Q2",
        "recipients": "2",
    }
    assert trail.pending == 0 and trail.written == 3
    assert typed(store.calls[-1][3]) == typed(store.calls[0][3]), "the same read's reply"


@pytest.mark.parametrize("riding", [False, True], ids=["alone", "riding"])
def test_noscript_after_script_flush_loads_the_script_and_calls_again(
    store: Recording,
    trail: audit.AuditTrail,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    riding: bool,
) -> None:
    first = read(store)
    redis_client.script_flush()
    if riding:
        trail.record({"event": "verdict", "queue_id": "Q1"})
    redis_client.config_resetstat()
    sent = client_commands(redis_server, lambda: read(store))
    # redis-py 4.3's MONITOR parser gives up on the script's text: an empty command.
    names = [command.split()[0].upper() if command else "SCRIPT" for command in sent]
    # The NOSCRIPT, then SCRIPT LOAD and the call again in one write.
    assert names == [*(["XADD"] if riding else []), "EVALSHA", "SCRIPT", "EVALSHA"], sent
    calls = {
        name: stats["calls"]
        for name, stats in redis_client.info("commandstats").items()
        if name in ("cmdstat_evalsha", "cmdstat_script|load", "cmdstat_xadd")
    }
    assert calls == {
        "cmdstat_evalsha": 2,
        "cmdstat_script|load": 1,
        **({"cmdstat_xadd": 1} if riding else {}),
    }
    assert read(store) == first
    assert redis_client.script_exists(store._sender_state.sha) == [True]
    assert [e["queue_id"] for e in entries(redis_client)] == (["Q1"] if riding else [])


class UncheckedPool(redis.ConnectionPool):
    """Hands out its idle connection without redis-py's readiness poll, so that a
    connection the server closed reaches the write, as one closed between the poll
    and the write does."""

    def get_connection(self, *_args: Any, **_options: Any) -> Any:
        with self._lock:
            available = self._available_connections
            connection = available.pop() if available else self.make_connection()
            self._in_use_connections.add(connection)
        connection.connect()  # type: ignore[no-untyped-call,unused-ignore]
        return connection


def test_a_killed_connection_is_retried_once_on_a_fresh_one(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    pool = UncheckedPool.from_url(redis_server.url, decode_responses=True, socket_timeout=1.0)
    lean = LeanCalls(pool)
    try:
        killed = client_id(lean)
        assert redis_client.client_kill_filter(_id=str(killed)) == 1
        xadd = ("XADD", keys.AUDIT_STREAM, "MINID", 0, "*", "event", "once")
        stream_id, fresh = lean.round_trip([xadd, ("CLIENT", "ID")])
        assert isinstance(stream_id, str) and int(fresh) != killed
        assert entries(redis_client) == [{"event": "once"}], "written once, by the retry"
        assert client_id(lean) == int(fresh), "the fresh connection went back to the pool"
    finally:
        pool.disconnect()


def test_a_killed_pooled_connection_is_transparent_to_the_store(
    store: Recording, lean: LeanCalls, redis_client: redis.Redis
) -> None:
    first = read(store)
    killed = client_id(lean)
    assert redis_client.client_kill_filter(_id=str(killed)) == 1
    assert read(store) == first
    assert client_id(lean) != killed


def test_an_error_reply_in_the_middle_of_a_ride_leaves_the_connection_in_step(
    store: Recording, lean: LeanCalls, trail: audit.AuditTrail, redis_client: redis.Redis
) -> None:
    first = read(store)
    connection = client_id(lean)
    redis_client.set(keys.AUDIT_STREAM, "not a stream")  # every XADD: WRONGTYPE
    for n in range(3):
        trail.record({"event": "verdict", "queue_id": f"Q{n}"})
    assert read(store) == first, "the script's reply, after three error replies"
    assert trail.written == 0
    redis_client.delete(keys.AUDIT_STREAM)
    trail.record({"event": "verdict", "queue_id": "Q3"})
    assert charge(store, ["a@x"]) == Charged(suppressed=(), fills=(1, 1))
    assert [e["queue_id"] for e in entries(redis_client)] == ["Q3"]
    assert client_id(lean) == connection, "the same connection all along"
    failing = redis_client.script_load(ERROR_SCRIPT)
    replies = lean.round_trip([("EVALSHA", failing, 0), ("ECHO", "after"), ("EVALSHA", failing, 0)])
    assert [type(r) for r in replies] == [ResponseError, str, ResponseError]
    assert replies[1] == "after"
    assert client_id(lean) == connection


def test_a_redis_that_went_away_is_store_unavailable_and_then_back(
    store: Recording, redis_server: RedisServer
) -> None:
    first = read(store)
    redis_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            read(store)
        assert store.outage.down
    finally:
        redis_server.start()
    redis_server.client().set(keys.REGISTRY, "0 back")
    seed(redis_server.client())
    assert read(store) == first
    assert not store.outage.down


def test_the_lean_path_warns_about_nothing(store: Recording, trail: audit.AuditTrail) -> None:
    """redis-py 8 deprecates get_connection's arguments, 4.3 requires one: no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read(store)
        trail.record({"event": "verdict", "queue_id": "Q1"})
        read(store)
