"""The spammer profile's ladder end to end: SMTP client -> Postfix -> aup-milter -> sink.

acme (standard plan: K = 3 near-cap repeats in a day, near-cap = 90 % of the
cap) gets a cap of 5 recipients by its tenant hash, so 5 recipients are near
the cap. The same content sent near the cap a 4th time is held and climbs
the ladder: the login, then the sender domain, then the tenant. Held mail
sits in Postfix's hold queue, never at the sink.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from aupmilter.store import keys
from testbed import Stack
from testbed.client import ClientFactory, Outcome, SmtpClient, make_message

pytestmark = pytest.mark.e2e

SENDER = "alice@acme.example"
BODY = "The same offer, to everyone, again.\n"
SUSPENDED = "aup:{acme}:suspended"


@pytest.fixture
def capped(stack: Stack) -> Iterator[Stack]:
    stack.redis_cli("HSET", "aup:tenant:acme", "max_recipients_per_message", "5")
    yield stack
    stack.redis_cli("HDEL", "aup:tenant:acme", "max_recipients_per_message")


class Mailer:
    def __init__(self, stack: Stack, client: SmtpClient) -> None:
        self.stack, self.client, self.sent = stack, client, 0

    def send(self, sender: str = SENDER, count: int = 5) -> tuple[Outcome, str]:
        self.sent += 1
        rcpts = [f"lad{self.sent}-{n}@example.net" for n in range(count)]
        message, token = make_message(sender, rcpts, subject="offer", body=BODY)
        outcome = self.client.send(sender, rcpts, message)
        assert outcome.accepted, outcome
        return outcome, token

    def delivered(self, sender: str = SENDER, count: int = 5) -> None:
        _outcome, token = self.send(sender, count)
        self.stack.wait_for_sink(token)

    def held(self, sender: str = SENDER, count: int = 5) -> None:
        outcome, token = self.send(sender, count)
        assert outcome.queue_id, "held mail is taken: 250 with its queue id"
        self.stack.wait_for_queue(outcome.queue_id, "hold")
        assert self.stack.find_sink_message(token) is None

    def offend(self, earlier: int = 0) -> None:
        for _ in range(3 - earlier):
            self.delivered()
        self.held()


def events(stack: Stack, name: str) -> list[dict[str, str]]:
    """The ladder's events of that name (written in the offence's own call, at once)."""
    with stack.redis.client() as client:
        entries = client.xrange(keys.AUDIT_STREAM)
    return [dict(fields) for _id, fields in entries if fields.get("event") == name]


def test_the_ladder_through_postfix_holds_each_rung(capped: Stack, connect: ClientFactory) -> None:
    mail = Mailer(capped, connect("acme"))
    # 1st offence: the login is suspended; its mail is held from then on.
    mail.offend()
    (event,) = events(capped, "sender-suspended")
    login = event["subject"]
    assert login.startswith("acme") and event["rule"] == "near-cap-repeat"
    assert json.loads(event["evidence"])["cap"] == 5
    mail.held(count=1)
    # Lifted with the CLI: the spent evidence does not fire again.
    lifted = capped.tenant_cli("lift", "acme", "--sender", login)
    assert "lifted sender" in lifted.stdout
    # 2nd offence: the domain; mail of any sender of it is held.
    mail.offend()
    (event,) = events(capped, "domain-suspended")
    assert event["subject"] == "acme.example" and event["offence"] == "2"
    mail.held("bob@acme.example", count=1)
    assert capped.redis_cli("HDEL", SUSPENDED, "domain:acme.example") == "1"
    # 3rd offence: the tenant is terminated; its next MAIL FROM is refused.
    mail.offend()
    (event,) = events(capped, "tenant-terminated")
    assert event["subject"] == "acme" and event["offence"] == "3"
    assert capped.redis_cli("HGET", "aup:tenant:acme", "status") == "terminated"
    message, _ = make_message(SENDER, ["x@example.net"], body=BODY)
    refused = connect("acme").send(SENDER, ["x@example.net"], message)
    assert (refused.mail.code, refused.mail.enhanced) == (550, "5.7.1")
    held = capped.relay.hold_queue()
    assert len(held) == 5, held  # each offence, and the mail after the first two
