"""Caps and windows over the milter protocol: RCPT replies, end-of-message outcomes, round trips."""

from __future__ import annotations

import redis

from aupmilter.policy.reputation import ReputationPlan
from aupmilter.store import keys
from tests.milter.harness import Daemon, Tenants
from tests.milter.mta import Kind
from tests.support import RedisServer, client_commands, round_trips


def rcpt_replies(daemon: Daemon, count: int, login: str = "acme") -> list[str]:
    with daemon.client() as client:
        assert client.mail("a@acme.example", macros={"{auth_authen}": login}).kind is Kind.CONTINUE
        replies = [client.rcpt(f"<r{n}@dest.example>").reply or "ok" for n in range(count)]
        client.abort()
    return replies


def test_the_101st_rcpt_of_a_standard_tenant_gets_452(daemon: Daemon, acme: str) -> None:
    replies = rcpt_replies(daemon, 103)
    assert replies[:100] == ["ok"] * 100
    assert replies[100:] == ["452 4.5.3"] * 3


def test_tenant_override_of_the_cap_applies_to_the_next_transaction(
    daemon: Daemon, acme: str, tenants: Tenants
) -> None:
    tenants.hset("acme", max_recipients_per_message="2")
    assert rcpt_replies(daemon, 3) == ["ok", "ok", "452 4.5.3"]
    tenants.hset("acme", max_recipients_per_message="bogus")
    with daemon.client() as client:
        mail = client.mail("a@acme.example", macros={"{auth_authen}": "acme"})
        assert mail.reply == "451 4.7.0"


def test_window_full_gives_450_naming_the_window_and_the_wait(
    daemon: Daemon, acme: str, tenants: Tenants
) -> None:
    tenants.hset("acme", **{"window.sender-recipients-minute": "3"})
    with daemon.client() as client:
        first = client.send_message(
            "a@acme.example", ["1@d.example", "2@d.example"], auth_login="acme", queue_id="W1"
        )
        assert first.eom is not None and first.eom.response.kind is Kind.CONTINUE
        assert client.mail("a@acme.example", macros={"{auth_authen}": "acme"}).kind is Kind.CONTINUE
        assert client.rcpt("<3@d.example>").kind is Kind.CONTINUE
        refused = client.rcpt("<4@d.example>")
        assert refused.reply == "450 4.7.1"
        text = refused.text or ""
        assert "3 recipients per minute for sender acme" in text
        assert "room again in" in text
        client.abort()


def test_suppressed_recipients_are_deleted_at_end_of_message(
    daemon: Daemon, acme: str, redis_db: redis.Redis
) -> None:
    redis_db.hset(keys.suppressed("acme"), "gone@d.example", "manual 1")
    with daemon.client() as client:
        kept = client.send_message(
            "a@acme.example", ["keep@d.example", "gone@D.EXAMPLE"], auth_login="acme"
        )
        assert kept.eom is not None and kept.eom.response.kind is Kind.CONTINUE
        assert kept.eom.deleted_rcpts == ("<gone@D.EXAMPLE>",)
        refused = client.send_message("a@acme.example", ["gone@d.example"], auth_login="acme")
        assert refused.eom is not None and refused.eom.response.reply == "550 5.7.1"
        assert "unsubscribed from acme" in (refused.eom.response.text or "")
    assert daemon.log.matching("recipient-suppressed")


def test_two_redis_round_trips_per_transaction_whatever_the_recipients(
    daemon: Daemon, acme: str, shared_redis: RedisServer
) -> None:
    def transaction(count: int) -> None:
        with daemon.client() as client:
            result = client.send_message(
                "a@acme.example", [f"r{n}@d.example" for n in range(count)], auth_login="acme"
            )
            assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE

    transaction(1)  # scripts loaded, pool connected
    for count in (1, 50):
        sent = client_commands(shared_redis, lambda count=count: transaction(count))  # type: ignore[misc]
        assert round_trips(sent) == ["EVALSHA", "EVALSHA"], (count, sent)


def delivered_count(redis_db: redis.Redis, tenant: str) -> int:
    window = ReputationPlan().counter(keys.RATE_DELIVERED)
    counter = keys.rate_counter(tenant, keys.RATE_DELIVERED, window.period_ms)
    return sum(int(n) for n in redis_db.hvals(counter))


def test_delivered_recipients_are_counted_for_the_rates_in_the_same_call(
    daemon: Daemon, acme: str, redis_db: redis.Redis, tenants: Tenants
) -> None:
    redis_db.hset(keys.suppressed("acme"), "gone@d.example", "manual 1")
    with daemon.client() as client:
        sent = client.send_message(
            "a@acme.example", ["1@d.example", "2@d.example", "gone@d.example"], auth_login="acme"
        )
        assert sent.eom is not None and sent.eom.response.kind is Kind.CONTINUE
    assert delivered_count(redis_db, "acme") == 2, "suppressed recipients are not delivered"
    # Held mail is not delivered: it does not dilute the complaint and bounce rates.
    tenants.set_status("acme", "suspended", reason="ops")
    with daemon.client() as client:
        held = client.send_message("a@acme.example", ["3@d.example"], auth_login="acme")
        assert held.eom is not None and held.eom.response.kind is Kind.CONTINUE
    assert delivered_count(redis_db, "acme") == 2
