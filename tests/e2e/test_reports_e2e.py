"""Complaints and bounces end to end: the private Postfix, its report intake, the milter.

A complaint (ARF) about a message the relay delivered is mailed to the
report address through the intake listener, as a feedback loop does; the
relay's own bounce of a recipient the next hop refuses reaches the intake as
Postfix's postmaster copy (postfix-sample/main.cf.intake). Either way the
tenant's next message to that address is refused; complaints past the
plan's threshold suspend the tenant, and its next message is held.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from aupmilter.policy.reputation import ReputationPlan
from aupmilter.store import keys
from testbed import Stack
from testbed.client import ClientFactory, SmtpClient, make_message
from testbed.proc import wait_until
from testbed.sink import REFUSE_PREFIX
from testbed.unsubscribe import BOUNCE_ADDRESS, REPORT_ADDRESS

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
SUPPRESSED = "aup:{acme}:suppressed"
SINK_HEADERS = re.compile(rb"\A(?:(?:Return-Path|X-Sink-[A-Za-z-]+):[^\r\n]*\r?\n)+")


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    stack.redis_cli("DEL", SUPPRESSED)
    yield stack
    stack.redis_cli("DEL", SUPPRESSED)


def suppressed(stack: Stack, address: str) -> str:
    return stack.redis_cli("HGET", SUPPRESSED, address)


def send_bulk(client: SmtpClient, stack: Stack, reader: str) -> bytes:
    """A bulk message from acme to reader, as the mailbox provider received it."""
    message, token = make_message(SENDER, [reader], subject="Winter news")
    message["Precedence"] = "bulk"
    outcome = client.send(SENDER, [reader], message)
    assert outcome.accepted, outcome
    return SINK_HEADERS.sub(b"", stack.wait_for_sink(token).raw)


def feedback_report(original: bytes) -> bytes:
    """An ARF report (RFC 5965) of a user's complaint, the original attached whole."""
    boundary = "arf-boundary-0001"
    return (
        (
            "From: Feedback Loop <fbl@provider.example>\r\n"
            f"To: {REPORT_ADDRESS}\r\n"
            "Subject: Abuse report\r\n"
            "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
            f"Message-ID: <arf-{uuid.uuid4().hex}@provider.example>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=feedback-report;\r\n"
            f' boundary="{boundary}"\r\n'
            "\r\n"
            f"--{boundary}\r\n"
            "Content-Type: text/plain\r\n\r\n"
            "This is an email abuse report for an email message received from you.\r\n"
            f"--{boundary}\r\n"
            "Content-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\n"
            "User-Agent: provider-fbl/1.0\r\n"
            "Version: 1\r\n"
            "Arrival-Date: Tue, 01 Dec 2026 11:59:00 +0000\r\n"
            f"--{boundary}\r\n"
            "Content-Type: message/rfc822\r\n"
            "Content-Disposition: inline\r\n\r\n"
        ).encode()
        + original.rstrip(b"\r\n")
        + f"\r\n--{boundary}--\r\n".encode()
    )


def refused_next(client: SmtpClient, reader: str) -> None:
    message, _ = make_message(SENDER, [reader], subject="More news")
    message["Precedence"] = "bulk"
    last = client.send(SENDER, [reader], message).last
    assert (last.code, last.enhanced) == (550, "5.7.1"), last


def test_complaint_to_the_report_address_suppresses_the_complainer(
    fresh: Stack, connect: ClientFactory
) -> None:
    reader = "complainer@example.net"
    client = connect("acme")
    original = send_bulk(client, fresh, reader)
    # A feedback loop's MTA delivers it to the intake listener (no milter there).
    with SmtpClient(fresh.host, fresh.intake_port) as provider:
        outcome = provider.send("fbl@provider.example", [REPORT_ADDRESS], feedback_report(original))
    assert outcome.accepted, outcome
    wait_until(
        lambda: suppressed(fresh, reader).startswith("complaint "),
        timeout=30,
        interval=0.1,
        what="the report intake to suppress the complainer",
        on_timeout=lambda: fresh.postfix_log()[-3000:],
    )
    wait_until(
        lambda: re.search(r"relay=aup-reports.*status=sent", fresh.postfix_log()),
        timeout=30,
        interval=0.1,
        what="Postfix to log the report's pipe delivery as sent",
        on_timeout=lambda: fresh.postfix_log()[-3000:],
    )
    refused_next(client, reader)


def test_the_relay_s_own_bounce_suppresses_the_refused_recipient(
    fresh: Stack, connect: ClientFactory
) -> None:
    reader = f"{REFUSE_PREFIX}gone@example.net"
    message, _ = make_message(SENDER, [reader], subject="Winter news")
    client = connect("acme")
    assert client.send(SENDER, [reader], message).accepted
    # The sink refuses the recipient with 550; Postfix returns a DSN to news@acme.example
    # and sends its postmaster copy to BOUNCE_ADDRESS, which the report intake reads.
    wait_until(
        lambda: suppressed(fresh, reader).startswith("bounce "),
        timeout=60,
        interval=0.2,
        what="Postfix's bounce notice to reach the intake and suppress the recipient",
        on_timeout=lambda: fresh.postfix_log()[-4000:],
    )
    # The suppression lands before the pipe command exits and Postfix logs the delivery.
    delivered = rf"to=<{re.escape(BOUNCE_ADDRESS)}>.*relay=aup-reports.*status=sent"
    wait_until(
        lambda: re.search(delivered, fresh.postfix_log()),
        timeout=30,
        interval=0.1,
        what="Postfix to log the bounce notice's pipe delivery as sent",
        on_timeout=lambda: fresh.postfix_log()[-3000:],
    )
    refused_next(client, reader)


def test_complaints_past_the_threshold_suspend_and_the_next_message_is_held(
    fresh: Stack, connect: ClientFactory
) -> None:
    window = ReputationPlan().counter(keys.RATE_DELIVERED)
    delivered = keys.rate_counter("acme", keys.RATE_DELIVERED, window.period_ms)
    complaints = keys.rate_counter("acme", "complaints", window.period_ms)
    fresh.redis_cli("DEL", delivered, complaints)
    # 997 recipients delivered earlier this week; the three messages below make 1000.
    bucket = int(time.time() * 1000) // window.bucket_ms
    fresh.redis_cli("HINCRBY", delivered, str(bucket), "997")
    try:
        client = connect("acme")
        readers = [f"reader{i}@example.net" for i in range(3)]
        originals = [send_bulk(client, fresh, reader) for reader in readers]
        assert fresh.redis_cli("HGET", delivered, str(bucket)) == "1000"
        with SmtpClient(fresh.host, fresh.intake_port) as provider:
            for original in originals:
                report = feedback_report(original)
                outcome = provider.send("fbl@provider.example", [REPORT_ADDRESS], report)
                assert outcome.accepted, outcome
        wait_until(
            lambda: fresh.redis_cli("HGET", "aup:tenant:acme", "status") == "suspended",
            timeout=60,
            interval=0.2,
            what="three complaints in 1000 delivered recipients to suspend acme",
            on_timeout=lambda: fresh.postfix_log()[-3000:],
        )
        reason = fresh.redis_cli("HGET", "aup:tenant:acme", "reason")
        assert reason.startswith("automatic suspension: complaint rate 0.30 % (3 complaints"), (
            reason
        )
        message, token = make_message(SENDER, ["newcomer@example.net"], subject="Spring news")
        outcome = client.send(SENDER, ["newcomer@example.net"], message)
        assert outcome.accepted and outcome.queue_id, outcome
        fresh.wait_for_queue(outcome.queue_id, "hold")
        assert fresh.find_sink_message(token) is None
    finally:
        fresh.redis_cli("DEL", delivered, complaints)
