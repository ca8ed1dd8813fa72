"""Feedback-ID end to end: bulk mail leaves the private Postfix stamped and signed.

What Gmail's feedback loop sees: one `Feedback-ID: CAMPAIGN:acme:bulk:RELAY`
under a DKIM signature that verifies against the test DNS after Postfix
applied the milter's edits (a tenant's own Feedback-ID deleted, ours
appended), and none on transactional mail.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage

import dkim
import pytest

from testbed import Stack
from testbed.client import ClientFactory, SmtpClient, make_message
from testbed.dkimkeys import dns_txt_lookup
from testbed.proc import wait_until
from testbed.stack import SinkMessage

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
RELAY_ID = "e2e-relay"
CONTENT_STAMP = re.compile(rf"[0-9a-f]{{12}}:acme:bulk:{RELAY_ID}")


def message(*headers: tuple[str, str], body: str) -> tuple[EmailMessage, str]:
    made, token = make_message(SENDER, ["reader@example.net"], subject="Autumn news", body=body)
    for name, value in headers:
        made[name] = value
    return made, token


def deliver(
    client: SmtpClient, stack: Stack, *headers: tuple[str, str], body: str = "Autumn news.\n"
) -> SinkMessage:
    made, token = message(*headers, body=body)
    outcome = client.send(SENDER, ["reader@example.net"], made)
    assert outcome.accepted, outcome
    return stack.wait_for_sink(token)


def stamps(delivered: SinkMessage) -> list[str]:
    return [" ".join(str(v).split()) for v in delivered.message.get_all("Feedback-ID") or []]


def signed_list(delivered: SinkMessage, stack: Stack) -> list[str]:
    """dkimpy verifies the sink's copy against the test DNS; returns the signature's h= list."""
    # The sink adds its own envelope headers on top; a receiver's view starts below them.
    raw = re.sub(rb"\A(?:(?:Return-Path|X-Sink-[A-Za-z-]+):[^\r\n]*\r?\n)+", b"", delivered.raw)
    assert dkim.verify(raw, dnsfunc=dns_txt_lookup(stack.host, stack.dns_port)), raw[:3000]
    signature = str(delivered.message["DKIM-Signature"])
    found = re.search(r"\bh=([^;]*)", "".join(signature.split()))
    assert found is not None
    return found.group(1).lower().split(":")


def set_relay_id(stack: Stack, relay_id: str | None) -> None:
    """Rewrite the milter's config and wait until its reload shows on bulk mail."""
    stack.milter_config_extra = f'[feedback_id]\nrelay_id = "{relay_id}"\n' if relay_id else ""
    stack.write_milter_config()

    def in_force() -> bool:
        with SmtpClient(stack.host, stack.smtp_port) as client:
            client.login("acme", "acme-demo", "PLAIN")
            probe = deliver(client, stack, ("Precedence", "bulk"))
        return bool(stamps(probe)) is (relay_id is not None)

    wait_until(in_force, timeout=20, interval=0.25, what=f"the milter's relay id {relay_id}")


@pytest.fixture
def stamping(stack: Stack) -> Iterator[Stack]:
    set_relay_id(stack, RELAY_ID)
    yield stack
    set_relay_id(stack, None)


def test_bulk_mail_arrives_with_a_signed_feedback_id(
    stamping: Stack, connect: ClientFactory
) -> None:
    client = connect("acme")
    bulk = deliver(client, stamping, ("Precedence", "bulk"))
    (stamp,) = stamps(bulk)
    assert CONTENT_STAMP.fullmatch(stamp), stamp
    listed = signed_list(bulk, stamping)
    assert listed.count("feedback-id") == 2 and listed.count("list-unsubscribe") == 2

    own = deliver(
        client,
        stamping,
        ("Precedence", "bulk"),
        ("Feedback-ID", "spring24:cust9:promo:theiresp"),
    )
    assert stamps(own) == [f"spring24:acme:bulk:{RELAY_ID}"], "theirs replaced, campaign kept"
    assert signed_list(own, stamping).count("feedback-id") == 2

    # Content of its own: the session's other tests may have made the shared text bulk by count.
    unique = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex)
    transactional = deliver(client, stamping, body=f"Your receipt, {unique}.\n")
    assert stamps(transactional) == []
    assert transactional.message["DKIM-Signature"] is None
