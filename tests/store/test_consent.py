"""The consent ledger against a real Redis: the rules inside charge.lua, and ConsentStore.

The lapse check and the last-bulk record ride in the end-of-message script
(still one EVALSHA per message); the tests give the script the same inputs
as policy.consent's table and compare.
"""

from __future__ import annotations

import time
from typing import cast

import pytest
import redis

from aupmilter.config import RedisSettings
from aupmilter.policy.consent import DAY, ConsentMode, ConsentPlan, Standing, Unrecorded, standing
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.store import keys
from aupmilter.store.client import (
    AllSuppressed,
    Charged,
    ChargeResult,
    ConsentCheck,
    Store,
    TooManyNew,
)
from aupmilter.store.consent import ConsentEntry, ConsentStore
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, client_commands
from tests.unit.policy.test_consent import STANDINGS

NOW = int(time.time())
LAPSE = 180 * DAY
ENFORCE = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=LAPSE)
WARN = ConsentPlan(mode=ConsentMode.WARN, lapse=LAPSE)
SHARE = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=LAPSE, new_recipient_share_ppm=500_000)
WINDOW = Window("tenant-recipients-day", Scope.TENANT, Unit.RECIPIENTS, 100_000, 86_400_000)
CONTENT = Window("content-fingerprint", Scope.TENANT, Unit.RECIPIENTS, -1, 86_400_000)
FP = "0123456789abcdef0123456789abcdef"
LEDGER, LAST = keys.consent("acme"), keys.last_bulk("acme")


@pytest.fixture
def store(redis_server: RedisServer, redis_client: redis.Redis) -> Store:
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    return Store(RedisSettings(redis_server.url, 0.5, 0.5))


def charge(
    store: Store,
    recipients: list[str],
    plan: ConsentPlan = ENFORCE,
    *,
    bulk: bool = True,
    content_from: int | None = None,
    now: int = NOW,
) -> ChargeResult:
    counters = [(keys.fingerprint_counter("acme", FP, CONTENT.period_ms), CONTENT)]
    return store.charge(
        "acme",
        (WINDOW,),
        "bob@acme.example",
        recipients,
        now * 1000,
        counters=counters if content_from is not None else (),
        consent=ConsentCheck(plan, known_bulk=bulk, bulk_from_counter=content_from),
    )


def recorded(client: redis.Redis) -> dict[str, int]:
    stored = cast(dict[str, str], client.hgetall(LAST))
    return {k: int(v) for k, v in stored.items()}


def test_keys_share_the_tenant_tag() -> None:
    assert LEDGER == "aup:{acme}:consent"
    assert keys.consent_sources("acme") == "aup:{acme}:consent:src"
    assert LAST == "aup:{acme}:lastbulk"


@pytest.mark.parametrize(("consent", "last_bulk", "ledger", "plan", "expected"), STANDINGS)
def test_the_script_judges_as_the_pure_rule(
    store: Store,
    redis_client: redis.Redis,
    consent: int | None,
    last_bulk: int | None,
    ledger: bool,
    plan: ConsentPlan,
    expected: Standing,
) -> None:
    given = None if consent is None else NOW - consent
    mailed = None if last_bulk is None else NOW - last_bulk
    assert standing(given, mailed, NOW, plan, has_ledger=ledger) is expected
    if ledger:
        redis_client.hset(LEDGER, "someone-else@example.net", NOW)
    if given is not None:
        redis_client.hset(LEDGER, "r@example.net", given)
    if mailed is not None:
        redis_client.hset(LAST, "r@example.net", mailed)
    warn = ConsentPlan(ConsentMode.WARN, plan.lapse, plan.unrecorded)
    result = charge(store, ["r@example.net"], warn)
    assert isinstance(result, Charged) and result.consent.judged
    assert result.consent.lapsed == (("r@example.net",) if expected is Standing.LAPSED else ())
    assert result.consent.new == (1 if expected is Standing.NEW else 0)
    recorded_now = redis_client.hget(LAST, "r@example.net") == str(NOW)
    assert recorded_now is (expected is not Standing.LAPSED), "only the delivered are recorded"


def seed_ledger(client: redis.Redis) -> None:
    client.hset(
        LEDGER,
        mapping={
            "fresh@example.net": NOW - 10 * DAY,
            "old@example.net": NOW - 400 * DAY,
            "kept@example.net": NOW - 400 * DAY,
            "gone@example.net": NOW - 10 * DAY,
        },
    )
    client.hset(LAST, "kept@example.net", NOW - 30 * DAY)
    client.hset(keys.suppressed("acme"), "gone@example.net", f"one-click {NOW}")


EVERYONE = ["fresh@example.net", "old@example.net", "kept@example.net", "gone@example.net"]


def test_enforce_drops_the_lapsed_and_records_only_the_delivered(
    store: Store, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    seed_ledger(redis_client)
    store.client.ping()  # the connection's handshake before counting
    results: list[ChargeResult] = []
    commands = client_commands(redis_server, lambda: results.append(charge(store, EVERYONE)))
    assert [c.split()[0].strip('"').upper() for c in commands] == ["EVALSHA"]
    result = results[0]
    assert isinstance(result, Charged)
    assert result.suppressed == ("gone@example.net",)
    assert result.consent.lapsed == ("old@example.net",)
    assert result.consent.considered == 3 and result.consent.new == 0
    assert result.fills == (2,), "the window is charged the delivered recipients only"
    assert recorded(redis_client) == {"fresh@example.net": NOW, "kept@example.net": NOW}

    again = charge(store, EVERYONE, now=NOW + 60)
    assert isinstance(again, Charged)
    assert again.consent.lapsed == ("old@example.net",), "a lapsed recipient does not heal"


def test_every_recipient_lapsed_or_suppressed_refuses_and_changes_nothing(
    store: Store, redis_client: redis.Redis
) -> None:
    seed_ledger(redis_client)
    result = charge(store, ["old@example.net", "gone@example.net"])
    assert isinstance(result, AllSuppressed)
    assert result.suppressed == ("gone@example.net",)
    assert result.consent.lapsed == ("old@example.net",)
    assert redis_client.keys("aup:{acme}:w:*") == [], "nothing charged"
    assert recorded(redis_client) == {"kept@example.net": NOW - 30 * DAY}


def test_warn_mode_delivers_the_lapsed_but_does_not_record_them(
    store: Store, redis_client: redis.Redis
) -> None:
    seed_ledger(redis_client)
    result = charge(store, EVERYONE, WARN)
    assert isinstance(result, Charged)
    assert result.consent.lapsed == ("old@example.net",)
    assert result.fills == (3,), "warn removes nothing"
    assert recorded(redis_client) == {"fresh@example.net": NOW, "kept@example.net": NOW}


def test_the_new_recipient_share_refuses_a_bought_list(
    store: Store, redis_client: redis.Redis
) -> None:
    known = [f"known{i}@example.net" for i in range(10)]
    redis_client.hset(LAST, mapping=dict.fromkeys(known, NOW - DAY))
    new = [f"new{i}@example.net" for i in range(20)]
    result = charge(store, known + new, SHARE)
    assert isinstance(result, TooManyNew)
    assert (result.consent.new, result.consent.considered) == (20, 30)
    assert redis_client.keys("aup:{acme}:w:*") == [] and redis_client.hlen(LAST) == 10

    small = [f"first{i}@example.net" for i in range(19)]
    first = charge(store, small, SHARE)
    assert isinstance(first, Charged), "below new_recipient_min: a new tenant's small message"
    assert first.consent.new == 19 and redis_client.hlen(LAST) == 29

    half = charge(store, known + new[:10], SHARE)
    assert isinstance(half, Charged), "exactly half is not above the share"

    others = [f"other{i}@example.net" for i in range(20)]
    warn = ConsentPlan(ConsentMode.WARN, LAPSE, new_recipient_share_ppm=500_000)
    warned = charge(store, known + others, warn)
    assert isinstance(warned, Charged) and warned.consent.new == 20


def test_unrecorded_lapsed_is_strict_with_a_ledger(store: Store, redis_client: redis.Redis) -> None:
    redis_client.hset(LEDGER, "fresh@example.net", NOW - DAY)
    strict = ConsentPlan(ConsentMode.ENFORCE, LAPSE, Unrecorded.LAPSED)
    result = charge(store, ["fresh@example.net", "stranger@example.net"], strict)
    assert isinstance(result, Charged) and result.consent.lapsed == ("stranger@example.net",)


def test_mail_that_is_not_bulk_is_not_judged_nor_recorded(
    store: Store, redis_client: redis.Redis
) -> None:
    seed_ledger(redis_client)
    result = charge(store, ["old@example.net"], bulk=False)
    assert isinstance(result, Charged) and not result.consent.judged
    assert result.fills == (1,)
    assert recorded(redis_client) == {"kept@example.net": NOW - 30 * DAY}


def test_bulk_by_the_content_counter_inside_the_call(
    store: Store, redis_client: redis.Redis
) -> None:
    seed_ledger(redis_client)
    first = charge(store, ["fresh@example.net", "old@example.net"], bulk=False, content_from=4)
    assert isinstance(first, Charged) and not first.consent.judged, "2 of 4: not bulk yet"
    second = charge(store, ["fresh@example.net", "old@example.net"], bulk=False, content_from=4)
    assert isinstance(second, Charged) and second.consent.judged, "2 + 2 reaches 4: bulk"
    assert second.consent.lapsed == ("old@example.net",)
    assert second.fills == (3, 4), "the content counter counts the addressed, lapsed too"
    assert recorded(redis_client)["fresh@example.net"] == NOW


def test_consent_off_reads_and_writes_nothing(store: Store, redis_client: redis.Redis) -> None:
    seed_ledger(redis_client)
    result = store.charge("acme", (WINDOW,), "bob@acme.example", ["old@example.net"], NOW * 1000)
    assert isinstance(result, Charged) and not result.consent.judged
    assert recorded(redis_client) == {"kept@example.net": NOW - 30 * DAY}


# --- ConsentStore --------------------------------------------------------------


def test_import_keeps_the_latest_consent(redis_client: redis.Redis) -> None:
    ledger = ConsentStore(redis_client)
    first = ledger.import_batch(
        "acme",
        [ConsentEntry("a@example.net", 1000, "form"), ConsentEntry("b@example.net", 2000, "form"),
         ConsentEntry("a@example.net", 1500, "shop")],
    )  # fmt: skip
    assert (first.added, first.updated, first.kept) == (2, 0, 1)
    later = [ConsentEntry("a@example.net", 1200, "old"), ConsentEntry("b@example.net", 3000, "new")]
    again = ledger.import_batch("acme", later)
    assert (again.added, again.updated, again.kept) == (0, 1, 1)
    assert redis_client.hgetall(LEDGER) == {"a@example.net": "1500", "b@example.net": "3000"}
    record = ledger.get("acme", "b@example.net")
    assert (record.consented_at, record.source, record.last_bulk) == (3000, "new", None)
    assert sorted(r.address for r in ledger.scan("acme")) == ["a@example.net", "b@example.net"]


def test_prune_and_remove(redis_client: redis.Redis) -> None:
    ledger = ConsentStore(redis_client)
    redis_client.hset(LAST, mapping={f"u{i}@example.net": NOW - i * DAY for i in range(2500)})
    assert ledger.prune("acme", NOW - 1000 * DAY) == 1499
    assert redis_client.hlen(LAST) == 1001
    ledger.import_batch("acme", [ConsentEntry("u1@example.net", NOW - DAY, "form")])
    assert ledger.remove("acme", "u1@example.net") is True
    assert ledger.remove("acme", "u1@example.net") is False
    assert ledger.get("acme", "u1@example.net").last_bulk is None
    entries = cast(list[tuple[str, dict[str, str]]], redis_client.xrange(keys.AUDIT_STREAM))
    events = [f["event"] for _id, f in entries]
    assert events == ["consent-prune", "consent-remove"]
