"""The small pure parts: addresses, the bounds of reading, DSN blocks, auto-reply markers."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import time

import pytest

from aupmilter.reports import autoreply, dsn, mime
from aupmilter.reports.classify import classify_bytes
from aupmilter.reports.model import MAX_ADDRESSES, Kind, mailbox, redacted, unique

HEADERS = email.parser.HeaderParser(policy=email.policy.compat32)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("bob@Example.COM", "bob@example.com"),
        ("<Bob@example.com>", "Bob@example.com"),
        ("rfc822; bob@example.com", "bob@example.com"),
        ("mailto:bob@example.com", "bob@example.com"),
        (" bob@example.com. ", "bob@example.com"),
        ("bob", None),
        ("bob@localhost", None),
        ('"bob smith"@example.com', None),
        ("bob@[192.0.2.1]", None),
        ("bob@-bad.example", None),
        ("a b@example.com", None),
        ("x" * 65 + "@example.com", None),
        ("b@" + "d" * 260 + ".example", None),
        ("Undisclosed Recipients", None),
    ],
)  # fmt: skip
def test_mailbox(raw: str, expected: str | None) -> None:
    assert mailbox(raw) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [("redacted@example.net", True), ("xxxxxx@example.com", True), ("****@example.com", True),
     ("rex@example.com", False), ("xavier@example.com", False)],
)  # fmt: skip
def test_redacted(address: str, expected: bool) -> None:
    assert redacted(address) is expected


def test_unique_keeps_the_first_spelling_and_drops_the_excluded() -> None:
    found = unique(["B@example.com", "b@example.com", "c@example.com"], ["C@EXAMPLE.COM"])
    assert found == ("B@example.com",)


def nested(depth: int) -> bytes:
    head = b"From: a@example.com\nTo: b@example.com\nMIME-Version: 1.0\n"
    body = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (i, i) for i in range(depth)
    )
    tail = b"".join(b"--n%d--\n" % i for i in reversed(range(depth)))
    return head + body + b"Content-Type: text/plain\n\nhello\n" + tail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"From: a@example.com\n\n" + b"x" * (mime.MAX_REPORT_BYTES + 1), "larger than 10 MiB"),
        (nested(mime.MAX_CONTAINERS + 1), "MIME containers"),
        (nested(mime.MAX_DEPTH + 2), "nested deeper than 8"),
        (b"", "empty message"),
        (b"\n\n\n", "empty message"),
        (b"just text, no header\n", "no header section"),
        (b'Content-Type: multipart/mixed; boundary="a"\n\n--b\n\nx\n--b--\n', "boundary"),
    ],
    ids=["huge", "containers", "depth", "empty", "blank", "no-header", "boundary"],
)
def test_hostile_input_is_unparseable_with_its_bound(raw: bytes, reason: str) -> None:
    report = classify_bytes(raw)
    assert report.kind is Kind.UNPARSEABLE
    assert reason in report.reason
    assert report.suppress == ()


def test_nesting_within_the_bounds_is_read() -> None:
    assert classify_bytes(nested(mime.MAX_DEPTH - 1)).kind is Kind.NOT_A_REPORT


def test_text_of_an_unknown_charset_reads_every_byte() -> None:
    part = email.message_from_bytes(
        b"Content-Type: text/plain; charset=x-unknown\n\n550 5.1.1 caf\xe9\n",
        policy=email.policy.compat32,
    )
    assert mime.text_of(part) == "550 5.1.1 caf\xe9\n"


def test_field_blocks_of_a_base64_part() -> None:
    encoded = base64.encodebytes(b"Reporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@b.example\n")
    raw = (
        b'Content-Type: multipart/report; boundary="b"\n\n--b\n'
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        + encoded
        + b"--b--\n"
    )
    message = mime.parse(raw)
    blocks = mime.field_blocks(mime.walk(message).leaves[0])
    assert [dict(b.items()) for b in blocks] == [
        {"Reporting-MTA": "dns; x"},
        {"Final-Recipient": "rfc822; a@b.example"},
    ]


@pytest.mark.parametrize(
    ("block", "kind", "status"),
    [
        ("Action: failed\nStatus: 5.1.1", Kind.HARD_BOUNCE, "5.1.1"),
        ("Action: failed\nStatus: 5.0.0 (permanent failure)", Kind.HARD_BOUNCE, "5.0.0"),
        ("Action: failed\nStatus: 4.2.2", Kind.SOFT_BOUNCE, "4.2.2"),
        ("Action: FAILED\nStatus: 5.1.10", Kind.HARD_BOUNCE, "5.1.10"),
        ("Action: failed\nDiagnostic-Code: smtp; 550 no such user", Kind.HARD_BOUNCE,
         "Diagnostic-Code 550"),
        ("Action: failed\nStatus: x\nDiagnostic-Code: smtp; 451 4.3.0 later", Kind.SOFT_BOUNCE,
         "Diagnostic-Code 451"),
        ("Action: failed", Kind.SOFT_BOUNCE, "no status"),
        # A reply code where the enhanced status belongs (flufl.bounce's dsn_03, real).
        ("Action: failure\nStatus: 553 Exceeded maximum inbound message size",
         Kind.HARD_BOUNCE, "Status 553"),
        ("Action: failed\nStatus: 452 too many recipients", Kind.SOFT_BOUNCE, "Status 452"),
        ("Action: error\nStatus: 5.1.1", Kind.HARD_BOUNCE, "5.1.1"),
        ("Action: delayed\nStatus: 4.4.1", Kind.DELAYED, "4.4.1"),
        ("Action: delayed (retrying)", Kind.DELAYED, ""),
        ("Action: delivered\nStatus: 2.0.0", None, "2.0.0"),
        ("Action: relayed\nStatus: 2.0.0", None, "2.0.0"),
        ("Action: expanded\nStatus: 2.0.0", None, "2.0.0"),
        ("Action: unheard-of\nStatus: 5.1.1", None, "5.1.1"),
    ],
)  # fmt: skip
def test_judge_one_recipient(block: str, kind: Kind | None, status: str) -> None:
    judged = dsn.judge(HEADERS.parsestr(f"Final-Recipient: rfc822; a@example.com\n{block}\n"))
    assert (judged.kind, judged.status, judged.address) == (kind, status, "a@example.com")


@pytest.mark.parametrize(
    ("fields", "address"),
    [
        ("Original-Recipient: rfc822;a@example.com\nFinal-Recipient: rfc822;b@example.com",
         "a@example.com"),
        ("Original-Recipient: x400; /C=X/\nFinal-Recipient: rfc822;b@example.com", "b@example.com"),
        ("Final-Recipient: unknown; nair_s", None),
        ("Final-Recipient: <c@example.com>", "c@example.com"),
    ],
)  # fmt: skip
def test_the_address_of_a_recipient_block(fields: str, address: str | None) -> None:
    assert dsn.judge(HEADERS.parsestr(f"{fields}\nAction: failed\n")).address == address


@pytest.mark.parametrize(
    ("headers", "text", "found"),
    [
        ("Subject: Out of Office: hello", "", True),
        ("Subject: Automatic reply: hello", "", True),
        ("Subject: Abwesenheitsnotiz", "", True),
        ("X-Autoreply: yes", "", True),
        ("Precedence: auto_reply", "", True),
        ("Auto-Submitted: auto-replied", "I am out of the office until Monday.", True),
        # Postfix and Exim put Auto-Submitted: auto-replied on their bounces too.
        ("Auto-Submitted: auto-replied\nSubject: Undelivered Mail Returned to Sender",
         "I'm sorry to have to inform you that your message could not be delivered", False),
        ("Subject: Re: out of office?", "", False),
    ],
)  # fmt: skip
def test_autoreply_markers(headers: str, text: str, found: bool) -> None:
    message = HEADERS.parsestr(f"From: a@example.com\n{headers}\n\n")
    assert (autoreply.autoreply_marker(message, text) is not None) is found


@pytest.mark.parametrize(
    ("headers", "text", "found"),
    [
        ("X-TMDA-Confirm: yes", "", True),
        ("Subject: Please confirm your message to bob", "", True),
        ("", "To prove that you are human, open this link.", True),
        ("", "This mailbox only accepts mail from approved senders.", True),
        ("Subject: Undelivered Mail Returned to Sender", "550 5.1.1 User unknown", False),
    ],
)  # fmt: skip
def test_challenge_markers(headers: str, text: str, found: bool) -> None:
    message = HEADERS.parsestr(f"From: a@example.com\n{headers}\n\n")
    assert (autoreply.challenge_marker(message, text) is not None) is found


def test_the_largest_bounce_read_is_classified_in_bounded_time() -> None:
    """10 MiB of failure lines: linear in the text, flufl.bounce given a bounded view."""
    line = b"user%06d@example.com: 550 5.1.1 unknown\n"
    count = mime.MAX_REPORT_BYTES // len(line % 0) - 10
    head = b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered\nTo: b@acme.example\n\n"
    raw = head + b"".join(line % i for i in range(count))
    started = time.monotonic()
    report = classify_bytes(raw[: mime.MAX_REPORT_BYTES])
    assert time.monotonic() - started < 15
    assert report.kind is Kind.HARD_BOUNCE
    assert len(report.suppress) == MAX_ADDRESSES
