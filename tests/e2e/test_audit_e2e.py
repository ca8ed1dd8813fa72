"""The audit trail and shadow mode through the real Postfix: Postfix's own queue ids.

A message delivered and a message held each leave their verdict in the
aup:audit stream under the queue id Postfix gave in its 250 reply, and
`aup-milter explain` tells them apart; a tenant in shadow mode gets its mail
to the sink byte for byte as sent while the trail says what would have happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from aupmilter.store import keys
from testbed import Stack
from testbed.client import ClientFactory, make_message

pytestmark = pytest.mark.e2e

RCPT = "someone@example.net"
SENDER = "alice@acme.example"
STREAM_TIMEOUT = 10.0


def verdict_of(stack: Stack, queue_id: str) -> dict[str, str]:
    """The verdict event of `queue_id`, once the daemon wrote it (it waits at most 1 s)."""
    deadline = time.monotonic() + STREAM_TIMEOUT
    while True:
        with stack.redis.client() as client:
            entries = client.xrange(keys.AUDIT_STREAM)
        found = [
            fields
            for _id, fields in entries
            if fields.get("queue_id") == queue_id and fields.get("event") == "verdict"
        ]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"one verdict event for {queue_id}, got {found}"
            return dict(found[0])
        time.sleep(0.1)


def explain(stack: Stack, queue_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "aupmilter", "explain", queue_id,
            "-c", "/nonexistent/aup-milter.toml",
            "--redis", stack.redis_url,
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_delivered_and_held_mail_are_explained_under_postfix_queue_ids(
    stack: Stack, connect: ClientFactory
) -> None:
    message, token = make_message(SENDER, [RCPT], subject="audited")
    delivered = connect("acme").send(SENDER, [RCPT], message)
    assert delivered.accepted and delivered.queue_id
    stack.wait_for_sink(token)

    stack.set_tenant_status("acme", "suspended", reason="spam report 4711")
    message, token = make_message(SENDER, [RCPT], subject="held")
    held = connect("acme").send(SENDER, [RCPT], message)
    assert held.accepted and held.queue_id
    stack.wait_for_queue(held.queue_id, "hold")

    accepted = verdict_of(stack, delivered.queue_id)
    assert accepted["verdict"] == "accept" and accepted["tenant"] == "acme"
    assert accepted["auth"] == "acme" and json.loads(accepted["rcpt"]) == [RCPT]
    quarantined = verdict_of(stack, held.queue_id)
    assert quarantined["verdict"] == "quarantine" and quarantined["rule"] == "tenant-suspended"

    told = explain(stack, delivered.queue_id)
    assert told.returncode == 0, told.stderr
    assert f"Message {delivered.queue_id} from {SENDER}" in told.stdout
    assert "DELIVERED" in told.stdout
    told = explain(stack, held.queue_id)
    assert told.returncode == 0, told.stderr
    assert "HELD in the Postfix hold queue" in told.stdout and "spam report 4711" in told.stdout


def test_shadow_mode_delivers_the_mail_as_sent_and_only_the_trail_knows(
    stack: Stack, connect: ClientFactory
) -> None:
    stack.set_tenant_status("acme", "suspended", reason="would be held")
    stack.redis_cli("HSET", "aup:tenant:acme", "mode", "shadow")
    try:
        message, token = make_message(SENDER, [RCPT], subject="shadowed")
        del message["Date"]  # enforced: 550 at end of message
        outcome = connect("acme").send(SENDER, [RCPT], message)
        assert outcome.accepted and outcome.queue_id, outcome
        arrived = stack.wait_for_sink(token)
    finally:
        stack.redis_cli("HDEL", "aup:tenant:acme", "mode")
    assert arrived.message["Date"] is None, "nothing added"
    assert arrived.message["List-Unsubscribe"] is None and arrived.message["Feedback-ID"] is None
    assert arrived.message["Message-ID"] == message["Message-ID"]

    event = verdict_of(stack, outcome.queue_id)
    assert event["mode"] == "shadow" and event["verdict"] == "would-reject"
    assert [s["verdict"] for s in json.loads(event["shadowed"])] == [
        "would-reject",
        "would-quarantine",
    ]
    told = explain(stack, outcome.queue_id)
    assert told.returncode == 0, told.stderr
    assert "would have been" in told.stdout and "shadow mode" in told.stdout
