"""Recipient caps and rate windows through the private Postfix, as a sending client sees them."""

from __future__ import annotations

import time

import pytest

from testbed import Stack
from testbed.client import ClientFactory, Outcome, SmtpClient, make_message
from testbed.proc import wait_until

pytestmark = pytest.mark.e2e

SENDER = "alice@acme.example"


def recipients(count: int, tag: str) -> list[str]:
    return [f"{tag}-{n}@example.net" for n in range(count)]


def send(client: SmtpClient, rcpts: list[str], subject: str) -> tuple[Outcome, str]:
    message, token = make_message(SENDER, rcpts, subject=subject)
    return client.send(SENDER, rcpts, message), token


def delivered_to(stack: Stack, token: str, expected: int) -> set[str]:
    """Every recipient the sink got the message for (Postfix may split it into several)."""

    def collected() -> set[str] | None:
        found = {
            rcpt
            for message in stack.sink_messages()
            if token in message.raw.decode("utf-8", "replace")
            for rcpt in message.rcpt_to
        }
        return found if len(found) >= expected else None

    return wait_until(collected, timeout=30, what=f"{expected} deliveries of {token}")


def codes(outcome: Outcome) -> list[tuple[int, str | None]]:
    return [(r.code, r.enhanced) for r in outcome.rcpts]


def test_the_101st_rcpt_gets_452_and_the_100_others_are_delivered(
    stack: Stack, connect: ClientFactory
) -> None:
    rcpts = recipients(101, "cap")
    outcome, token = send(connect("acme"), rcpts, "cap")
    assert codes(outcome)[:100] == [(250, "2.1.5")] * 100
    last = outcome.rcpts[100]
    assert (last.code, last.enhanced) == (452, "4.5.3"), last
    assert "at most 100 recipients per message" in last.text
    assert outcome.accepted
    assert delivered_to(stack, token, 100) == set(rcpts[:100])


def test_exhausted_hourly_window_gives_450_at_rcpt(stack: Stack, connect: ClientFactory) -> None:
    # The standard plan's hourly sender window, lowered for acme by an override in Redis.
    stack.redis_cli("HSET", "aup:tenant:acme", "window.sender-recipients-hour", "2")
    client = connect("acme")
    first, token = send(client, recipients(2, "hour"), "hourly 1")
    assert first.accepted
    delivered_to(stack, token, 2)
    second, _ = send(client, recipients(1, "hour-more"), "hourly 2")
    refused = second.rcpts[0]
    assert (refused.code, refused.enhanced) == (450, "4.7.1"), refused
    assert "2 recipients per hour for sender acme" in refused.text
    assert "room again in" in refused.text
    assert second.data is None


def test_mail_flows_again_after_the_window_slides(stack: Stack, connect: ClientFactory) -> None:
    stack.redis_cli("HSET", "aup:tenant:acme", "plan", "e2e-short")
    client = connect("acme")
    full, _ = send(client, recipients(4, "slide"), "fills the window")
    assert codes(full) == [(250, "2.1.5")] * 3 + [(450, "4.7.1")]
    assert "3 recipients per 6 seconds for sender acme" in full.rcpts[3].text
    filled_at = time.monotonic()
    # 6 s window in buckets of 100 ms: room is back between 6.0 and 6.1 s later.
    time.sleep(max(0.0, filled_at + 6.2 - time.monotonic()))
    again, token = send(client, recipients(3, "slid"), "after the slide")
    assert codes(again) == [(250, "2.1.5")] * 3
    delivered_to(stack, token, 3)


def test_an_aborted_transaction_charges_nothing(stack: Stack, connect: ClientFactory) -> None:
    stack.redis_cli("HSET", "aup:tenant:acme", "plan", "e2e-short")
    client = connect("acme")
    assert client.mail(SENDER).code == 250
    assert [client.rcpt(r).code for r in recipients(3, "rset")] == [250] * 3
    assert client.rset().code == 250
    outcome, token = send(client, recipients(3, "after-rset"), "after RSET")
    assert codes(outcome) == [(250, "2.1.5")] * 3
    delivered_to(stack, token, 3)


def test_a_tenant_override_takes_effect_without_restart(
    stack: Stack, connect: ClientFactory
) -> None:
    milter_pid = stack.status()["milter"]
    client = connect("acme")
    stack.redis_cli("HSET", "aup:tenant:acme", "max_recipients_per_message", "2")
    outcome, token = send(client, recipients(3, "override"), "override")
    assert codes(outcome) == [(250, "2.1.5")] * 2 + [(452, "4.5.3")]
    assert "at most 2 recipients per message" in outcome.rcpts[2].text
    delivered_to(stack, token, 2)
    stack.redis_cli("HDEL", "aup:tenant:acme", "max_recipients_per_message")
    outcome, _ = send(client, recipients(3, "restored"), "restored")
    assert codes(outcome) == [(250, "2.1.5")] * 3
    assert stack.status()["milter"] == milter_pid


def test_suppressed_recipient_is_dropped_in_the_end_of_message_call(
    stack: Stack, connect: ClientFactory
) -> None:
    """Suppression costs no extra round trip: the charge script drops the recipient."""
    kept, gone = "kept@example.net", "Gone@Example.NET"
    stack.redis_cli("HSET", "aup:{acme}:suppressed", "Gone@example.net", "manual 1")
    try:
        client = connect("acme")
        outcome, token = send(client, [kept, gone], "one suppressed")
        assert outcome.accepted
        assert delivered_to(stack, token, 1) == {kept}
        refused, _ = send(client, [gone], "all suppressed")
        assert refused.data is not None
        assert (refused.data.code, refused.data.enhanced) == (550, "5.7.1")
        assert "unsubscribed from acme" in refused.data.text
    finally:
        stack.redis_cli("DEL", "aup:{acme}:suppressed")
