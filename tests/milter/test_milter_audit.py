"""The audit trail and shadow mode, over the real milter protocol, daemon and Redis.

Every verdict reaches the aup:audit stream without a round trip of its own,
`aup-milter explain` tells a delivered, a held and a refused message from
the events the daemon wrote, and a tenant in shadow mode gets its mail
through unchanged while the trail says what enforcement would have done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import cast

import redis

from aupmilter.store import keys
from tests.milter.harness import Daemon, Tenants, child_env
from tests.milter.mta import Kind, compliant_headers
from tests.support import RedisServer

STREAM_TIMEOUT = 5.0
"""The flusher writes events that found no ride after 1 s; a little slack on top."""


def stream_events(redis_db: redis.Redis) -> list[dict[str, str]]:
    entries = cast(list[tuple[str, dict[str, str]]], redis_db.xrange(keys.AUDIT_STREAM))
    return [fields for _id, fields in entries]


def wait_for_events(redis_db: redis.Redis, count: int, **match: str) -> list[dict[str, str]]:
    deadline = time.monotonic() + STREAM_TIMEOUT
    while True:
        found = [e for e in stream_events(redis_db) if all(e.get(k) == v for k, v in match.items())]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"expected {count} events like {match}, got {found}"
            return found
        time.sleep(0.05)


def explain(server: RedisServer, queue_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "aupmilter", "explain", queue_id,
            "-c", "/nonexistent/aup-milter.toml", "--redis", server.url,
        ],
        capture_output=True, text=True, timeout=30, check=False, env=child_env(),
    )  # fmt: skip


def test_delivered_held_and_refused_messages_are_explained_from_the_trail(
    daemon: Daemon, acme: str, tenants: Tenants, redis_db: redis.Redis, shared_redis: RedisServer
) -> None:
    tenants.add("beta", logins=["beta"], domains=["beta.example"])
    tenants.set_status("beta", "suspended", "unpaid invoice")
    with daemon.client() as client:
        delivered = client.send_message(
            "a@acme.example", ["r1@d.example", "r2@d.example"], auth_login="acme", queue_id="QA1"
        )
        held = client.send_message("b@beta.example", ["r@d.example"], queue_id="QH1")
        refused = client.send_message("x@stranger.example", ["r@d.example"], queue_id="QR1")
    assert delivered.eom is not None and delivered.eom.response.kind is Kind.CONTINUE
    assert held.eom is not None and held.eom.quarantine_reason
    assert refused.refused_at == "mail"

    (accepted,) = wait_for_events(redis_db, 1, queue_id="QA1")
    assert accepted["event"] == "verdict" and accepted["verdict"] == "accept"
    assert accepted["tenant"] == "acme" and accepted["stage"] == "eom"
    assert accepted["recipients"] == "2" and accepted["mode"] == "enforce"
    assert json.loads(accepted["rcpt"]) == ["r1@d.example", "r2@d.example"]
    assert float(accepted["ts"]) > time.time() - 60
    (quarantined,) = wait_for_events(redis_db, 1, queue_id="QH1")
    assert quarantined["verdict"] == "quarantine" and quarantined["rule"] == "tenant-suspended"
    assert "unpaid invoice" in quarantined["reason"]
    (rejected,) = wait_for_events(redis_db, 1, queue_id="QR1")
    assert rejected["verdict"] == "reject" and rejected["stage"] == "mail"
    assert rejected["rule"] == "unknown-sender" and rejected["reply"].startswith("550 5.7.1 ")

    shown = explain(shared_redis, "QA1")
    assert shown.returncode == 0, shown.stderr
    assert "DELIVERED to 2 recipients" in shown.stdout and "acme" in shown.stdout
    shown = explain(shared_redis, "QH1")
    assert shown.returncode == 0, shown.stderr
    assert "HELD in the Postfix hold queue" in shown.stdout and "unpaid invoice" in shown.stdout
    shown = explain(shared_redis, "QR1")
    assert shown.returncode == 0, shown.stderr
    assert "REFUSED" in shown.stdout and "550 5.7.1" in shown.stdout
    assert "unknown-sender" in shown.stdout
    unknown = explain(shared_redis, "NOSUCHID")
    assert unknown.returncode == 1 and "nothing is known" in unknown.stderr + unknown.stdout


def test_refused_recipients_are_events_of_their_own(
    daemon: Daemon, acme: str, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.hset("acme", max_recipients_per_message="2")
    recipients = ["r1@d.example", "r2@d.example", "r3@d.example"]
    with daemon.client() as client:
        result = client.send_message(
            "a@acme.example", recipients, auth_login="acme", queue_id="QC1"
        )
    assert [r.refuses for _, r in result.rcpts] == [False, False, True]
    (refusal,) = wait_for_events(redis_db, 1, event="recipient-refused")
    assert refusal["recipient"] == "r3@d.example" and refusal["rule"] == "recipient-cap"
    assert refusal["verdict"] == "tempfail" and refusal["stage"] == "rcpt"
    assert refusal["reply"].startswith("452 4.5.3 ")
    assert json.loads(refusal["evidence"]) == {"cap": 2, "accepted": 2}
    (verdict,) = wait_for_events(redis_db, 1, queue_id="QC1", event="verdict")
    assert verdict["recipients"] == "2"


def test_shadow_mode_lets_everything_pass_and_records_what_it_would_have_done(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.add("newco", logins=["newco"], domains=["globex.example"])
    tenants.hset("newco", mode="shadow", max_recipients_per_message="1")
    tenants.set_status("newco", "suspended", "onboarding review")
    recipients = ["r1@d.example", "r2@d.example"]
    headers = [h for h in compliant_headers("n@globex.example", recipients) if h[0] != "Date"]
    with daemon.client() as client:
        result = client.send_message(
            "n@globex.example", recipients, auth_login="newco", headers=headers, queue_id="QS1"
        )
    # Enforced, this message would lose a recipient, miss its Date and go to the hold queue.
    assert not any(r.refuses for _, r in result.rcpts), result.rcpts
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    assert result.eom.quarantine_reason is None and not result.eom.modified

    (refusal,) = wait_for_events(redis_db, 1, event="recipient-refused")
    assert refusal["verdict"] == "would-tempfail" and refusal["mode"] == "shadow"
    assert refusal["recipient"] == "r2@d.example" and refusal["rule"] == "recipient-cap"
    (verdict,) = wait_for_events(redis_db, 1, queue_id="QS1", event="verdict")
    assert verdict["mode"] == "shadow" and verdict["verdict"] == "would-reject"
    assert verdict["rule"] == "header_counts", verdict  # Date is required once
    assert verdict["recipients"] == "2", "in shadow mode the refused recipient was accepted"
    shadowed = json.loads(verdict["shadowed"])
    assert [s["verdict"] for s in shadowed] == ["would-reject", "would-quarantine"]
    assert shadowed[1]["rule"] == "tenant-suspended"


def test_enforcing_again_is_one_field(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.add("newco", logins=["newco"], domains=["globex.example"])
    tenants.hset("newco", mode="shadow")
    tenants.set_status("newco", "suspended", "review")
    with daemon.client() as client:
        passed = client.send_message("n@globex.example", ["r@d.example"], auth_login="newco")
        redis_db.hdel(keys.tenant("newco"), keys.FIELD_MODE)  # what ops do with redis-cli
        held = client.send_message("n@globex.example", ["r@d.example"], auth_login="newco")
    assert passed.eom is not None and passed.eom.quarantine_reason is None
    assert held.eom is not None and held.eom.quarantine_reason
