"""The spammer profile's ladder over the milter protocol: sender, domain, tenant.

The test plan caps messages at 10 recipients; 9 (90 %) is near the cap, and
K = 2: the third near-cap transaction with the same content by the same
sender within the hour is the offence. Everything real: the daemon, Redis,
the CLI that lifts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.milter.harness import PLANS_DIR, Daemon, StartDaemon, Tenants
from tests.milter.mta import Kind, TransactionResult

LADDER_PLAN = """
[plan.tight]
description = "ten recipients per message, a quick ladder"
max_recipients_per_message = 10

[plan.tight.ladder]
near_cap_ratio = 0.9
near_cap_repeats = 2
near_cap_window = "1h"
"""
NEAR_CAP = [f"r{i}@dest.example" for i in range(9)]
BELOW_CAP = NEAR_CAP[:8]
BODY = b"Buy now, the same offer for everyone.\r\n"
SUSPENDED = "aup:{acme}:suspended"


@pytest.fixture
def daemon(start_daemon: StartDaemon, tmp_path: Path) -> Daemon:
    plans = tmp_path / "policies"
    plans.mkdir()
    shutil.copy(PLANS_DIR / "plans.toml", plans / "plans.toml")
    (plans / "tight.toml").write_text(LADDER_PLAN)
    return start_daemon(policy={"plans_dir": str(plans)})


@pytest.fixture
def acme(tenants: Tenants) -> str:
    tenants.add("acme", plan="tight", domains=["acme.example"])
    return "acme"


class Sender:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.count = 0

    def __call__(
        self, sender: str, recipients: list[str] = NEAR_CAP, body: bytes = BODY
    ) -> TransactionResult:
        self.count += 1
        with self.daemon.client() as client:
            return client.send_message(
                sender, recipients, body=body, queue_id=f"LAD{self.count:03d}"
            )


def passed(result: TransactionResult) -> None:
    assert result.refused_at is None, result
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    assert result.eom.quarantine_reason is None, result.eom.quarantine_reason


def held(result: TransactionResult, *words: str) -> str:
    assert result.refused_at is None, result
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    reason = result.eom.quarantine_reason
    assert reason is not None, "expected the hold queue"
    for word in words:
        assert word in reason, reason
    return reason


def events(client: redis.Redis, name: str) -> list[dict[str, str]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange("aup:audit"))
    return [dict(fields) for _id, fields in entries if fields.get("event") == name]


def offend(send: Sender, sender: str, earlier: int = 0) -> TransactionResult:
    """Near-cap sends of the same content until the offence (K = 2: the third)."""
    for _ in range(2 - earlier):
        passed(send(sender))
    return send(sender)


def test_the_ladder_climbs_sender_domain_tenant_and_lifts_do_not_refire(
    daemon: Daemon, acme: str, tenants: Tenants, redis_db: redis.Redis
) -> None:
    send = Sender(daemon)
    # Below the cap, however often: nothing.
    for _ in range(4):
        passed(send("bob@acme.example", BELOW_CAP))
    # Different content near the cap: its own counter.
    passed(send("bob@acme.example", body=b"Another text entirely.\r\n"))

    # 1st offence: the sender.
    mark = daemon.log.mark()
    held(offend(send, "bob@acme.example"), "near-cap-repeat")
    (event,) = events(redis_db, "sender-suspended")
    assert event["tenant"] == "acme" and event["subject"] == "bob@acme.example"
    assert event["offence"] == "1" and event["rule"] == "near-cap-repeat"
    assert event["verdict"] == "suspend" and event["queue_id"] == f"LAD{send.count:03d}"
    assert event["sender"] == "bob@acme.example" and event["conn"]
    evidence = json.loads(event["evidence"])
    assert {k: evidence[k] for k in ("repeats", "window", "recipients", "cap", "ratio")} == {
        "repeats": 3,
        "window": 3600,
        "recipients": 9,
        "cap": 10,
        "ratio": 0.9,
    }
    assert len(evidence["fingerprint"]) == 12
    warning = daemon.log.wait_for("sender-suspended", since=mark, logger="aupmilter.ladder")
    assert warning["level"] == "warning"
    verdict = daemon.log.verdict(f"LAD{send.count:03d}")
    assert verdict["verdict"] == "quarantine"
    stored = redis_db.hget(SUSPENDED, "sender:bob@acme.example")
    assert stored is not None and "offence 1" in str(stored)

    # Its next mail, however small, goes to the hold queue from MAIL FROM on.
    held(send("bob@acme.example", ["x@dest.example"]), "bob@acme.example", "suspended")
    verdict = daemon.log.verdict(f"LAD{send.count:03d}")
    assert verdict["verdict"] == "quarantine" and verdict["stage"] == "eom"
    # Only bob: alice of the same domain sends on.
    passed(send("alice@acme.example", ["x@dest.example"]))

    # Held mail climbs no rung.
    for _ in range(3):
        held(send("bob@acme.example"))
    assert len(events(redis_db, "sender-suspended")) == 1

    # Lifted by the CLI: audited, and bob's next near-cap mail does not re-fire.
    done = tenants.cli("lift", "acme", "--sender", "bob@acme.example")
    assert done.returncode == 0, done.stderr
    assert "lifted sender bob@acme.example" in done.stdout
    (lifted,) = events(redis_db, "lifted")
    assert (lifted["tenant"], lifted["subject"], lifted["by"]) == (
        "acme",
        "bob@acme.example",
        "cli",
    )
    assert lifted["ts"].isdigit() and lifted["detail"]
    again = tenants.cli("lift", "acme", "--sender", "bob@acme.example")
    assert again.returncode == 1 and "not suspended" in again.stderr
    passed(send("bob@acme.example"))
    assert len(events(redis_db, "sender-suspended")) == 1, "the spent evidence fired again"

    # 2nd offence: the domain; every sender of it is held.
    held(offend(send, "bob@acme.example", earlier=1), "near-cap-repeat")
    (event,) = events(redis_db, "domain-suspended")
    assert (event["subject"], event["offence"]) == ("acme.example", "2")
    held(send("alice@acme.example", ["x@dest.example"]), "acme.example", "suspended")
    assert redis_db.hget(SUSPENDED, "sender:bob@acme.example") is None

    # The one-command lift of redis-cli works as well as the CLI.
    assert redis_db.hdel(SUSPENDED, "domain:acme.example") == 1
    passed(send("alice@acme.example", ["x@dest.example"]))

    # 3rd offence: the tenant is terminated; its next mail is refused at MAIL FROM.
    held(offend(send, "bob@acme.example"), "near-cap-repeat")
    (event,) = events(redis_db, "tenant-terminated")
    assert (event["subject"], event["offence"], event["verdict"]) == ("acme", "3", "terminate")
    tenant = cast(dict[str, str], redis_db.hgetall("aup:tenant:acme"))
    assert tenant["status"] == "terminated" and "near-cap-repeat offence 3" in tenant["reason"]
    refused = send("alice@acme.example", ["x@dest.example"])
    assert refused.refused_at == "mail" and refused.mail.reply is not None
    assert refused.mail.reply.startswith("550")

    # tenant show tells the whole story.
    shown = tenants.cli("show", "acme")
    assert shown.returncode == 0, shown.stderr
    assert "near-cap-repeat offences of bob@acme.example: 3" in shown.stdout


def test_a_login_is_suspended_as_itself(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.add("acme", plan="tight", logins=["newsletter"], domains=["acme.example"])
    send = Sender(daemon)

    def by_login(sender: str) -> TransactionResult:
        send.count += 1
        with daemon.client() as client:
            return client.send_message(
                sender, NEAR_CAP, auth_login="newsletter", body=BODY, queue_id=f"LOG{send.count}"
            )

    passed(by_login("a@acme.example"))
    passed(by_login("b@acme.example"))  # another mailbox, the same login: the same sender
    held(by_login("c@acme.example"), "near-cap-repeat")
    (event,) = events(redis_db, "sender-suspended")
    assert event["subject"] == "newsletter" and event["sender"] == "c@acme.example"
    assert redis_db.hexists(SUSPENDED, "sender:newsletter")
    held(by_login("d@acme.example"), "newsletter", "suspended")


def test_shadow_mode_records_would_suspend_and_changes_nothing(
    daemon: Daemon, acme: str, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.hset("acme", mode="shadow")
    send = Sender(daemon)
    passed(offend(send, "bob@acme.example"))
    (event,) = events(redis_db, "sender-suspended")
    assert event["verdict"] == "would-suspend" and event["offence"] == "1"
    assert not redis_db.exists(SUSPENDED, "aup:{acme}:offences")
    passed(send("bob@acme.example"))  # the counter was reset: one offence, one event
    assert len(events(redis_db, "sender-suspended")) == 1
    passed(offend(send, "bob@acme.example", earlier=1))
    assert [e["offence"] for e in events(redis_db, "sender-suspended")] == ["1", "1"]
    assert redis_db.hget("aup:tenant:acme", "status") == "active"


def test_a_repeat_that_raced_past_the_offence_is_held_without_a_second_offence(
    daemon: Daemon, acme: str, redis_db: redis.Redis
) -> None:
    send = Sender(daemon)
    passed(send("bob@acme.example"))
    passed(send("bob@acme.example"))
    # A concurrent transaction made the offence and reset the counter after this
    # one was charged: this one sees a fill past K + 1.
    (key,) = redis_db.scan_iter("aup:{acme}:nearcap:*")
    bucket = next(iter(cast(dict[str, str], redis_db.hgetall(key))))
    redis_db.hincrby(key, bucket, 1)
    held(send("bob@acme.example"), "near-cap-repeat")
    assert events(redis_db, "sender-suspended") == [], "the racer makes no offence of its own"
    assert not redis_db.exists(SUSPENDED)
