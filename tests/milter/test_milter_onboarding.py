"""Domain onboarding at end of message, over the milter protocol, the real daemon and Redis.

The tenant's `verified:<domain>` fields (what `tenant verify-domain`
records; written here as ops would with redis-cli) decide bulk mail on a
plan with onboarding on: 550 with what to fix, 451 when only lookups failed,
a warning in warn mode, `would-reject` in shadow mode; transactional mail
is never judged, and a refused message costs no window (one round trip).
"""

from __future__ import annotations

import shutil
import time
from email.utils import formatdate
from pathlib import Path

import pytest
import redis

from aupmilter.store import keys
from tests.milter.harness import PLANS_DIR, Daemon, StartDaemon, Tenants
from tests.milter.mta import EomResult
from tests.milter.test_milter_audit import wait_for_events
from tests.support import RedisServer, client_commands, round_trips

PLANS = """
[plan.onboard]
bulk_recipients = 3
[plan.onboard.onboarding]
mode = "enforce"
max_age = "30d"

[plan.onboard-no-rdap]
[plan.onboard-no-rdap.onboarding]
mode = "enforce"
require = ["ownership", "spf", "dkim", "dmarc"]

[plan.onboard-envelope]
[plan.onboard-envelope.onboarding]
mode = "enforce"
check_envelope = true

[plan.onboard-warn]
[plan.onboard-warn.onboarding]
mode = "warn"
"""
DAY = 86_400


@pytest.fixture
def daemon(start_daemon: StartDaemon, tmp_path: Path) -> Daemon:
    plans = tmp_path / "policies"
    plans.mkdir()
    shutil.copy(PLANS_DIR / "plans.toml", plans / "plans.toml")
    (plans / "onboard.toml").write_text(PLANS)
    return start_daemon(policy={"plans_dir": str(plans)})


@pytest.fixture
def acme(tenants: Tenants) -> Tenants:
    tenants.add("acme", plan="onboard", logins=["acme"], domains=["acme.example",
                "acme-mail.example"])  # fmt: skip
    return tenants


def verified(tenants: Tenants, domain: str, value: str) -> None:
    tenants.hset("acme", **{keys.verified_field(domain): value})


def send(
    daemon: Daemon,
    *extra: tuple[str, str],
    recipients: tuple[str, ...] = ("ann@example.net",),
    sender: str = "news@acme.example",
    from_header: str = "News <news@acme.example>",
) -> EomResult:
    headers = [
        ("From", from_header),
        ("To", ", ".join(recipients)),
        ("Subject", "Autumn news"),
        ("Date", formatdate(localtime=True)),
        ("Message-ID", f"<{time.monotonic_ns()}@acme.example>"),
        *extra,
    ]
    with daemon.client() as client:
        result = client.send_message(sender, recipients, auth_login="acme", headers=headers)
    assert result.eom is not None, result
    return result.eom


BULK = ("Precedence", "bulk")


def test_unverified_bulk_mail_is_refused_with_what_to_fix_and_not_charged(
    daemon: Daemon, acme: Tenants, shared_redis: RedisServer, redis_db: redis.Redis
) -> None:
    assert send(daemon).response.reply is None  # transactional: never judged (and warms up)
    eom: list[EomResult] = []
    trips = round_trips(client_commands(shared_redis, lambda: eom.append(send(daemon, BULK))))
    response = eom[0].response
    assert response.reply == "550 5.7.1", response
    assert response.text is not None
    assert "acme.example" in response.text and "never verified" in response.text
    assert "aup-milter tenant verify-domain acme acme.example" in response.text
    assert trips == ["EVALSHA"], "a refused message is not charged"
    event = wait_for_events(redis_db, 1, event="verdict", rule="domain-unverified")[-1]
    assert event["verdict"] == "reject" and event["reply"].startswith("550 5.7.1")
    # Bulk by recipient count (the plan's bulk_recipients) is.
    many = ("a@example.net", "b@example.net", "c@example.net")
    assert send(daemon, recipients=many).response.reply == "550 5.7.1"


@pytest.mark.parametrize(
    ("value", "plan", "reply", "in_text"),
    [
        ("{now} pass -", "onboard", None, ""),
        ("{old} pass -", "onboard", "550 5.7.1", "older than 30 days"),
        ("{now} fail spf=fail,rdap=unknown", "onboard", "550 5.7.1", "rdap unknown, spf fail"),
        ("{now} unknown rdap=unknown", "onboard", "451 4.7.0", "could not complete: rdap"),
        ("{now} unknown rdap=unknown", "onboard-no-rdap", None, ""),
        ("{now} fail spf=fail", "onboard-no-rdap", "550 5.7.1", "spf fail"),
        ("not a verification", "onboard", "550 5.7.1", "never verified"),
    ],
)
def test_the_recorded_verification_decides(
    daemon: Daemon, acme: Tenants, value: str, plan: str, reply: str | None, in_text: str
) -> None:
    now = int(time.time())
    acme.hset("acme", plan=plan)
    verified(acme, "acme.example", value.format(now=now - 60, old=now - 31 * DAY))
    response = send(daemon, BULK).response
    assert response.reply == reply, response
    assert in_text in (response.text or "")


def test_subdomains_and_the_envelope_domain(daemon: Daemon, acme: Tenants) -> None:
    now = int(time.time())
    verified(acme, "acme.example", f"{now} pass -")
    # From news.acme.example: covered by acme.example's record.
    sub = send(daemon, BULK, from_header="News <news@news.acme.example>")
    assert sub.response.reply is None, sub.response
    # A bounce subdomain whose own record failed counts only with check_envelope.
    verified(acme, "mail.acme.example", f"{now} fail spf=fail")
    bounce = "bounce@x.mail.acme.example"
    assert send(daemon, BULK, sender=bounce).response.reply is None
    acme.hset("acme", plan="onboard-envelope")
    response = send(daemon, BULK, sender=bounce).response
    assert response.reply == "550 5.7.1" and "x.mail.acme.example" in (response.text or "")


def test_warn_mode_delivers_and_records_the_finding(
    daemon: Daemon, acme: Tenants, redis_db: redis.Redis
) -> None:
    acme.hset("acme", plan="onboard-warn")
    assert send(daemon, BULK).response.reply is None
    event = wait_for_events(redis_db, 1, event="verdict", verdict="accept")[-1]
    assert "onboarding: bulk mail from acme.example: it was never verified" in event["warnings"]
    daemon.log.wait_for("(plan onboard-warn: onboarding warn)", level="warning")


def test_shadow_mode_records_what_it_would_refuse(
    daemon: Daemon, acme: Tenants, redis_db: redis.Redis
) -> None:
    acme.hset("acme", mode="shadow")
    assert send(daemon, BULK).response.reply is None
    event = wait_for_events(redis_db, 1, event="verdict", mode="shadow")[-1]
    assert event["verdict"] == "would-reject" and event["rule"] == "domain-unverified"
